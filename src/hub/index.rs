//! Columns beside the twins: how conditions are answered without visiting every twin.
//!
//! For each path a condition reads, the hub keeps a column: one dictionary code per slot
//! (`u32`, code 0 = the path is missing), and the dictionary of the values present, each
//! with the number of slots holding it. A condition is split into a plan
//! ([`crate::iothub::query::Plan`]): its `AND`, `OR` and `NOT` nodes become operations on
//! pairs of bit sets (the slots where a part is true, and where it is false; neither is
//! undefined), and each test of one path is evaluated once per dictionary value by the row
//! evaluator and spread over the column in one pass. Tests that read two paths are
//! evaluated per twin. So `tags.env='prod' AND tags.ring IN ['canary','early']` costs
//! two passes over arrays of integers, whatever the twins hold.
//!
//! Columns are made on first use (one pass over the twins) and kept current: every change
//! to a slot marks it stale ([`Columns::touch`]), and the stale slots are re-read before the
//! next evaluation, so a burst of writes costs one refresh. At most [`MAX_COLUMNS`] columns
//! are kept; the least recently used goes first.

use super::bitset::BitSet;
use super::state::Slot;
use crate::iothub::path::PathId;
use crate::iothub::query::{Plan, Truth};
use crate::iothub::value::{Row, Val};
use std::collections::HashMap;

/// Most columns kept at once (each costs 4 bytes per twin).
pub const MAX_COLUMNS: usize = 64;

/// A value as a dictionary key (floats by their bits).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(Box<str>),
    Object,
    Array,
}

impl Key {
    fn of(v: Val<'_>) -> Key {
        match v {
            Val::Undefined => Key::Undefined,
            Val::Null => Key::Null,
            Val::Bool(b) => Key::Bool(b),
            Val::Int(i) => Key::Int(i),
            Val::Float(f) => Key::Float(f.to_bits()),
            Val::Str(s) => Key::Str(s.into()),
            Val::Object => Key::Object,
            Val::Array => Key::Array,
        }
    }
    fn val(&self) -> Val<'_> {
        match self {
            Key::Undefined => Val::Undefined,
            Key::Null => Val::Null,
            Key::Bool(b) => Val::Bool(*b),
            Key::Int(i) => Val::Int(*i),
            Key::Float(f) => Val::Float(f64::from_bits(*f)),
            Key::Str(s) => Val::Str(s),
            Key::Object => Val::Object,
            Key::Array => Val::Array,
        }
    }
    /// True when this key stands for `v` (without allocating).
    fn is(&self, v: Val<'_>) -> bool {
        match (self, v) {
            (Key::Undefined, Val::Undefined)
            | (Key::Null, Val::Null)
            | (Key::Object, Val::Object)
            | (Key::Array, Val::Array) => true,
            (Key::Bool(a), Val::Bool(b)) => *a == b,
            (Key::Int(a), Val::Int(b)) => *a == b,
            (Key::Float(a), Val::Float(b)) => *a == b.to_bits(),
            (Key::Str(a), Val::Str(b)) => **a == *b,
            _ => false,
        }
    }
}

/// One path's values, dictionary-encoded.
struct Column {
    /// Per slot, the code of its value (0: missing).
    codes: Vec<u32>,
    /// Code to value; code 0 is `Undefined`, freed codes are `Undefined` too.
    dict: Vec<Key>,
    /// Slots holding each code (not kept for code 0).
    counts: Vec<u32>,
    /// Value to code.
    ids: HashMap<Key, u32>,
    /// Codes no slot holds any more, reused first.
    free: Vec<u32>,
    /// The evaluation that last used it (for eviction).
    used: u64,
}

impl Column {
    fn new() -> Column {
        Column {
            codes: Vec::new(),
            dict: vec![Key::Undefined],
            counts: vec![0],
            ids: HashMap::new(),
            free: Vec::new(),
            used: 0,
        }
    }

    fn build(path: PathId, slots: &[Option<Slot>]) -> Column {
        let mut c = Column::new();
        c.codes = vec![0; slots.len()];
        for (i, s) in slots.iter().enumerate() {
            if let Some(s) = s {
                c.set(i, s.row().lookup(path));
            }
        }
        c
    }

    fn set(&mut self, i: usize, v: Val<'_>) {
        if i >= self.codes.len() {
            self.codes.resize(i + 1, 0);
        }
        let old = self.codes[i];
        if self.dict[old as usize].is(v) {
            return;
        }
        let new = if v == Val::Undefined {
            0
        } else {
            let key = Key::of(v);
            match self.ids.get(&key) {
                Some(&c) => c,
                None => {
                    let c = match self.free.pop() {
                        Some(c) => {
                            self.dict[c as usize] = key.clone();
                            c
                        }
                        None => {
                            self.dict.push(key.clone());
                            self.counts.push(0);
                            (self.dict.len() - 1) as u32
                        }
                    };
                    self.ids.insert(key, c);
                    c
                }
            }
        };
        if new != 0 {
            self.counts[new as usize] += 1;
        }
        self.codes[i] = new;
        if old != 0 {
            let n = &mut self.counts[old as usize];
            *n -= 1;
            if *n == 0 {
                let key = std::mem::replace(&mut self.dict[old as usize], Key::Undefined);
                self.ids.remove(&key);
                self.free.push(old);
            }
        }
    }
}

/// The columns of one hub, and which slots changed since they were last brought up to
/// date (see the module docs).
#[derive(Default)]
pub struct Columns {
    cols: HashMap<PathId, Column>,
    stale: Vec<u32>,
    stale_flag: BitSet,
    /// Slots that hold a device.
    live: BitSet,
    tick: u64,
}

/// Truth as two bit sets: where it is true, where it is false (elsewhere: unknown).
struct Tv {
    t: BitSet,
    f: BitSet,
}

impl Columns {
    /// Marks slot `i` changed: its values are re-read before the next evaluation.
    pub fn touch(&mut self, i: u32) {
        if self.stale_flag.set(i, true) {
            self.stale.push(i);
        }
    }

    /// Number of columns kept (tests and the bench).
    pub fn column_count(&self) -> usize {
        self.cols.len()
    }

    /// The slots that hold a device.
    pub fn live(&mut self, slots: &[Option<Slot>]) -> BitSet {
        self.refresh(slots);
        self.live.clone()
    }

    fn refresh(&mut self, slots: &[Option<Slot>]) {
        for i in std::mem::take(&mut self.stale) {
            self.stale_flag.set(i, false);
            let slot = slots.get(i as usize).and_then(Option::as_ref);
            self.live.set(i, slot.is_some());
            let row = slot.map(Slot::row);
            for (p, c) in &mut self.cols {
                let v = row.as_ref().map_or(Val::Undefined, |r| r.lookup(*p));
                c.set(i as usize, v);
            }
        }
    }

    /// The slots where `plan` is true, or `None` when it needs more columns than are
    /// kept (the caller then evaluates row by row).
    pub fn matching(&mut self, slots: &[Option<Slot>], plan: &Plan<'_>) -> Option<BitSet> {
        self.refresh(slots);
        self.tick += 1;
        let mut need = Vec::new();
        column_paths(plan, &mut need);
        if need.len() > MAX_COLUMNS {
            return None;
        }
        for p in &need {
            if !self.cols.contains_key(p) {
                if self.cols.len() >= MAX_COLUMNS {
                    let victim = self
                        .cols
                        .iter()
                        .filter(|(q, _)| !need.contains(q))
                        .min_by_key(|(_, c)| c.used)
                        .map(|(q, _)| *q)?;
                    self.cols.remove(&victim);
                }
                self.cols.insert(*p, Column::build(*p, slots));
            }
            if let Some(c) = self.cols.get_mut(p) {
                c.used = self.tick;
            }
        }
        let mut out = self.eval(slots, plan).t;
        out.intersect_with(&self.live);
        Some(out)
    }

    fn eval(&self, slots: &[Option<Slot>], plan: &Plan<'_>) -> Tv {
        let n = slots.len();
        match plan {
            Plan::And(xs) => {
                let mut it = xs.iter().map(|x| self.eval(slots, x));
                let mut acc = it.next().unwrap_or_else(|| Tv {
                    t: self.live.clone(),
                    f: BitSet::new(),
                });
                for x in it {
                    acc.t.intersect_with(&x.t);
                    acc.f.union_with(&x.f);
                }
                acc
            }
            Plan::Or(xs) => {
                let mut it = xs.iter().map(|x| self.eval(slots, x));
                let mut acc = it.next().unwrap_or_else(|| Tv {
                    t: BitSet::new(),
                    f: self.live.clone(),
                });
                for x in it {
                    acc.t.union_with(&x.t);
                    acc.f.intersect_with(&x.f);
                }
                acc
            }
            Plan::Not(x) => {
                let Tv { t, f } = self.eval(slots, x);
                Tv { t: f, f: t }
            }
            Plan::Const(c) => match c {
                Truth::True => Tv {
                    t: self.live.clone(),
                    f: BitSet::new(),
                },
                Truth::False => Tv {
                    t: BitSet::new(),
                    f: self.live.clone(),
                },
                Truth::Unknown => Tv {
                    t: BitSet::new(),
                    f: BitSet::new(),
                },
            },
            Plan::Column(p, test) => {
                let col = &self.cols[p];
                // 1: true, 2: false, 0: unknown; once per distinct value.
                let table: Vec<u8> = col
                    .dict
                    .iter()
                    .map(|k| match test.truth(k.val()) {
                        Truth::True => 1,
                        Truth::False => 2,
                        Truth::Unknown => 0,
                    })
                    .collect();
                let words = n.div_ceil(64);
                let mut t = vec![0u64; words];
                let mut f = vec![0u64; words];
                let codes = &col.codes[..n.min(col.codes.len())];
                for (w, chunk) in codes.chunks(64).enumerate() {
                    let (mut tw, mut fw) = (0u64, 0u64);
                    for (b, &c) in chunk.iter().enumerate() {
                        let r = table[c as usize] as u64;
                        tw |= (r & 1) << b;
                        fw |= (r >> 1) << b;
                    }
                    t[w] = tw;
                    f[w] = fw;
                }
                // Slots past the column's end hold nothing: the test of a missing value.
                if codes.len() < n {
                    let tail = table[0];
                    for i in codes.len()..n {
                        if tail == 1 {
                            t[i / 64] |= 1 << (i % 64);
                        } else if tail == 2 {
                            f[i / 64] |= 1 << (i % 64);
                        }
                    }
                }
                Tv {
                    t: BitSet::from_words(t),
                    f: BitSet::from_words(f),
                }
            }
            Plan::Row(test) => {
                let mut t = BitSet::new();
                let mut f = BitSet::new();
                for i in self.live.iter() {
                    if let Some(Some(s)) = slots.get(i as usize) {
                        match test.truth(&s.row()) {
                            Truth::True => t.set(i, true),
                            Truth::False => f.set(i, true),
                            Truth::Unknown => false,
                        };
                    }
                }
                Tv { t, f }
            }
        }
    }
}

fn column_paths(plan: &Plan<'_>, out: &mut Vec<PathId>) {
    match plan {
        Plan::And(xs) | Plan::Or(xs) => xs.iter().for_each(|x| column_paths(x, out)),
        Plan::Not(x) => column_paths(x, out),
        Plan::Column(p, _) => {
            if !out.contains(p) {
                out.push(*p);
            }
        }
        Plan::Const(_) | Plan::Row(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{Changes, HubState, Limits};
    use crate::iothub::device::Device;
    use crate::iothub::query::Condition;
    use crate::iothub::query::proptests::{small_expr, twin};
    use crate::iothub::twin::Section;
    use jiff::Timestamp;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    /// Adds a device holding what `t` holds (as far as the hub accepts it).
    fn add(st: &mut HubState, k: usize, t: &Value) {
        let mut ch = Changes::default();
        let id = match t["deviceId"].as_str() {
            Some(id) if st.slot(id).is_none() => id.to_string(),
            _ => format!("x{k}"),
        };
        let init = json!({"tags": t["tags"]});
        if st
            .create_device(Device::new(&id), Some(&init), now(), &mut ch)
            .is_err()
            && st
                .create_device(Device::new(&id), None, now(), &mut ch)
                .is_err()
        {
            return;
        }
        if let Some(r) = t["properties"].get("reported") {
            let _ = st.patch_reported(&id, r, now(), &mut ch);
        }
        if let Some(c) = t.get("configurations").and_then(Value::as_object) {
            let i = st.index[&id];
            st.journal_slot(i);
            let slot = st.slots[i as usize].as_mut().unwrap();
            let _ = slot.twin.set_section(Section::Configurations, c);
        }
    }

    /// The row evaluator's answer.
    fn by_rows(st: &HubState, c: &Condition) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, s) in st.slots.iter().enumerate() {
            if let Some(s) = s
                && c.matches(&s.row())
            {
                out.push(i as u32);
            }
        }
        out
    }

    fn check(st: &HubState, conds: &[Condition]) -> Result<(), TestCaseError> {
        for c in conds {
            let got: Vec<u32> = st.matching(Some(c)).iter().collect();
            prop_assert_eq!(got, by_rows(st, c), "{}", c.text());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The columns (and the key index) answer every condition as the row evaluator
        /// does, over random twins, also after the twins change, devices come and go,
        /// and a write is rolled back.
        #[test]
        fn columns_agree_with_the_row_evaluator(
            exprs in prop::collection::vec(small_expr(), 1..5),
            twins in prop::collection::vec(twin(), 1..10),
            edits in prop::collection::vec((0u8..5, any::<prop::sample::Index>(), twin()), 0..8),
        ) {
            let conds: Vec<Condition> = exprs
                .iter()
                .filter_map(|e| Condition::parse(&e.to_string()).ok())
                .collect();
            let mut st = HubState::new(Limits::default());
            for (k, t) in twins.iter().enumerate() {
                add(&mut st, k, t);
            }
            check(&st, &conds)?;
            for (n, (op, pick, t)) in edits.iter().enumerate() {
                let ids: Vec<String> = st.slots().map(|s| s.device.device_id.clone()).collect();
                let mut ch = Changes::default();
                match (op, ids.is_empty()) {
                    (0, false) => {
                        let patch = json!({"tags": t["tags"]});
                        let _ = st.update_twin(pick.get(&ids).as_str(), &patch, None, true, now(), &mut ch);
                    }
                    (1, false) => {
                        let _ = st.patch_reported(pick.get(&ids).as_str(), &t["properties"]["reported"], now(), &mut ch);
                    }
                    (2, false) => {
                        let _ = st.delete_device(pick.get(&ids).as_str(), None, &mut ch);
                    }
                    (3, false) => {
                        st.begin();
                        let _ = st.delete_device(pick.get(&ids).as_str(), None, &mut ch);
                        add(&mut st, 1000 + n, t);
                        st.rollback();
                    }
                    _ => add(&mut st, 100 + n, t),
                }
                check(&st, &conds)?;
            }
        }
    }

    #[test]
    fn device_id_conditions_use_the_key_index_and_no_column() {
        let mut st = HubState::new(Limits::default());
        let mut ch = Changes::default();
        for i in 0..100 {
            st.create_device(
                Device::new(&format!("dev-{i:03}")),
                Some(&json!({"tags": {"ring": if i % 2 == 0 { "a" } else { "b" }}})),
                now(),
                &mut ch,
            )
            .unwrap();
        }
        for (text, want) in [
            ("deviceId = 'dev-007'", vec![7]),
            ("'dev-007' = DeviceId", vec![7]),
            ("deviceId IN ['dev-001', 'dev-002', 'nope', 3]", vec![1, 2]),
            (
                "deviceId IN ['dev-001', 'dev-002'] AND tags.ring = 'a'",
                vec![2],
            ),
            ("deviceId = 'nope'", vec![]),
        ] {
            let c = Condition::parse(text).unwrap();
            assert!(c.device_ids().is_some(), "{text}");
            assert_eq!(
                st.matching(Some(&c)).iter().collect::<Vec<_>>(),
                want,
                "{text}"
            );
            assert_eq!(st.column_count(), 0, "{text} built a column");
        }
        // Not pinned: a disjunction, a negation, a case-folded or non-equality test.
        for text in [
            "deviceId = 'dev-001' OR tags.ring = 'a'",
            "deviceId != 'dev-001'",
            "NOT (deviceId = 'dev-001')",
            "deviceId NIN ['dev-001']",
        ] {
            let c = Condition::parse(text).unwrap();
            assert!(c.device_ids().is_none(), "{text}");
        }
        let c = Condition::parse("tags.ring = 'a'").unwrap();
        assert_eq!(st.matching(Some(&c)).len(), 50);
        assert_eq!(st.column_count(), 1);
    }

    #[test]
    fn columns_follow_writes_and_free_values() {
        let mut st = HubState::new(Limits::default());
        let mut ch = Changes::default();
        for i in 0..10 {
            st.create_device(
                Device::new(&format!("d{i}")),
                Some(&json!({"tags": {"v": i}})),
                now(),
                &mut ch,
            )
            .unwrap();
        }
        let c = Condition::parse("tags.v >= 5").unwrap();
        assert_eq!(st.matching(Some(&c)).len(), 5);
        for i in 0..10 {
            st.update_twin(
                &format!("d{i}"),
                &json!({"tags": {"v": 7}}),
                None,
                false,
                now(),
                &mut ch,
            )
            .unwrap();
        }
        assert_eq!(st.matching(Some(&c)).len(), 10);
        let p = crate::iothub::path::intern_lc("tags.v");
        let cols = st.columns.lock();
        let col = &cols.cols[&p];
        // One value left in use; the nine others were freed for reuse.
        assert_eq!(col.ids.len(), 1);
        assert_eq!(col.free.len(), 9);
    }
}
