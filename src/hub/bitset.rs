//! A growable bit set over twin slots: the engine's per-configuration "targeted",
//! "applied" and per-metric sets. Counting is a popcount, so gate counts cost nothing.

/// A set of `u32` slot numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
    len: usize,
}

impl BitSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }
    /// True when `i` is a member.
    pub fn contains(&self, i: u32) -> bool {
        let (w, b) = (i as usize / 64, i % 64);
        self.words.get(w).is_some_and(|x| x & (1 << b) != 0)
    }
    /// Sets or clears bit `i`; returns true when it changed.
    pub fn set(&mut self, i: u32, on: bool) -> bool {
        let (w, b) = (i as usize / 64, i % 64);
        if w >= self.words.len() {
            if !on {
                return false;
            }
            self.words.resize(w + 1, 0);
        }
        let before = self.words[w] & (1 << b) != 0;
        if before == on {
            return false;
        }
        if on {
            self.words[w] |= 1 << b;
            self.len += 1;
        } else {
            self.words[w] &= !(1 << b);
            self.len -= 1;
        }
        true
    }
    /// Number of members (kept as a counter, so O(1)).
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when there are no members.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Removes every member.
    pub fn clear(&mut self) {
        self.words.clear();
        self.len = 0;
    }
    /// A set from its 64-bit words (bit `b` of word `w` is member `w * 64 + b`).
    pub fn from_words(words: Vec<u64>) -> Self {
        let len = words.iter().map(|w| w.count_ones() as usize).sum();
        BitSet { words, len }
    }
    /// The 64-bit words (see [`BitSet::from_words`]); trailing words may be missing.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
    /// Keeps only the members `other` has too.
    pub fn intersect_with(&mut self, other: &BitSet) {
        self.words.truncate(other.words.len());
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
        self.recount();
    }
    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &BitSet) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.recount();
    }
    fn recount(&mut self) {
        self.len = self.words.iter().map(|w| w.count_ones() as usize).sum();
    }
    /// The members from `start` on, in ascending order.
    pub fn iter_from(&self, start: u32) -> impl Iterator<Item = u32> + '_ {
        let first = start as usize / 64;
        self.words
            .iter()
            .enumerate()
            .skip(first)
            .flat_map(move |(wi, &w)| {
                let mut w = if wi == first {
                    w & (u64::MAX << (start % 64))
                } else {
                    w
                };
                std::iter::from_fn(move || {
                    if w == 0 {
                        return None;
                    }
                    let b = w.trailing_zeros();
                    w &= w - 1;
                    Some(wi as u32 * 64 + b)
                })
            })
    }
    /// The members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(wi as u32 * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_count_and_iterate() {
        let mut s = BitSet::new();
        assert!(s.set(3, true));
        assert!(!s.set(3, true));
        assert!(s.set(200, true));
        assert!(!s.set(1000, false));
        assert_eq!(s.len(), 2);
        assert!(s.contains(200) && !s.contains(4));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 200]);
        assert!(s.set(3, false));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn word_operations() {
        let a = BitSet::from_words(vec![0b1011, 1]);
        let mut b = BitSet::from_words(vec![0b0110]);
        assert_eq!(a.len(), 4);
        let mut i = a.clone();
        i.intersect_with(&b);
        assert_eq!(i.iter().collect::<Vec<_>>(), vec![1]);
        b.union_with(&a);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 64]);
        assert_eq!(b.len(), 5);
        assert_eq!(b.iter_from(2).collect::<Vec<_>>(), vec![2, 3, 64]);
        assert_eq!(b.iter_from(64).collect::<Vec<_>>(), vec![64]);
        assert_eq!(b.iter_from(65).count(), 0);
    }
}
