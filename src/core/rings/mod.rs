//! Ring assignment for `DeviceRings` (`docs/rings.md`): which ring each device belongs to.
//! Pure: the devices (id, stratum, the tag as found) in, the assignment and the tag writes
//! out.
//!
//! # How
//! 1. Each device has a score, the SHA-256 of `salt/deviceId`: a stable pseudo-random
//!    order that a new salt reshuffles.
//! 2. Ring sizes: the fleet's size split by the percents (largest remainder, so the sizes
//!    add up), then `minDevices` taken from the later rings where they have devices to
//!    spare.
//! 3. Quotas per stratum (the combination of the `spreadBy` values): each stratum split in
//!    the rings' proportions, rounded so that every ring's total stays at its size; a
//!    stratum's share of a ring is within one device of its exact proportion.
//! 4. Pinned devices, and devices whose tag someone else set (`handSet: leave`), stay
//!    where they are and count there. A device ringmaster tagged stays in its ring while
//!    the ring's quota in its stratum holds it; a ring over its quota lets go of its
//!    devices with the highest scores. Those and the untagged devices fill the rings under
//!    their quota, in ring order, lowest score first.
//!
//! So a device moves only when its ring shrinks below it (or grows over it from a later
//! ring): growing canary from 2% to 5% moves exactly the 3% it grows by, from the next
//! ring, and no canary device leaves. A device that joins the fleet fills a ring short of
//! its quota; nobody else moves for it.

pub mod validate;

use crate::resources::{DeviceRingsSpec, HandSetPolicy};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The tag key under which ringmaster records the ring it wrote: `tags.ringmaster.<tag>`.
/// A tag that differs from it (or has no record) was set by someone else.
pub const OWNER_TAG: &str = "ringmaster";

/// A device as the assignment needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The device id.
    pub id: String,
    /// Its `spreadBy` values joined by `/` (empty without `spreadBy`).
    pub stratum: String,
    /// The value of `tags.<tag>` as found.
    pub tag: Option<String>,
    /// The ring ringmaster recorded writing (`tags.ringmaster.<tag>`).
    pub owned: Option<String>,
}

/// Why a device is where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Pinned by the spec.
    Pinned,
    /// Tagged by someone else and left there (`handSet: leave`).
    HandSet,
    /// Assigned by ringmaster.
    Assigned,
}

/// What the devices should be.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assignment {
    /// Device id -> ring (every device that has a ring).
    pub ring_of: BTreeMap<String, String>,
    /// Tag writes to make: device id -> ring, in device order.
    pub writes: Vec<(String, String)>,
    /// Devices per ring.
    pub per_ring: BTreeMap<String, u64>,
    /// Devices per stratum per ring.
    pub per_stratum: BTreeMap<String, BTreeMap<String, u64>>,
    /// Devices whose tag someone else set: id -> its value.
    pub hand_set: BTreeMap<String, String>,
    /// Devices ringmaster had tagged that change ring.
    pub moved: u64,
    /// What the spec asks that the fleet cannot give.
    pub problems: Vec<String>,
}

/// A device's score: the first 8 bytes of SHA-256(`salt/id`).
pub fn score(salt: &str, id: &str) -> u64 {
    let d = Sha256::digest(format!("{salt}/{id}").as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Splits `n` by `weights` (largest remainder): the parts add up to `n`; ties go to the
/// earlier part.
pub fn apportion(n: u64, weights: &[f64]) -> Vec<u64> {
    let total: f64 = weights.iter().sum();
    if weights.is_empty() || total <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut parts: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let mut left = n.saturating_sub(parts.iter().sum());
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.partial_cmp(&ra)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(weights.len() * 2) {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

/// Ring sizes for a fleet of `n`: the percents, then `minDevices` taken from the later
/// rings (the last first) where they have more than their own minimum.
pub fn ring_sizes(spec: &DeviceRingsSpec, n: u64, problems: &mut Vec<String>) -> Vec<u64> {
    let weights: Vec<f64> = spec.rings.iter().map(|r| r.percent.max(0.0)).collect();
    let mut sizes = apportion(n, &weights);
    let mins: Vec<u64> = spec
        .rings
        .iter()
        .map(|r| u64::from(r.min_devices.unwrap_or(0)))
        .collect();
    for i in 0..sizes.len() {
        while sizes[i] < mins[i] {
            // A later ring with devices above its own minimum gives one.
            let Some(j) = (i + 1..sizes.len()).rev().find(|&j| sizes[j] > mins[j]) else {
                problems.push(format!(
                    "ring {} has {} devices, minDevices is {}: the fleet has no more to spare",
                    spec.rings[i].name, sizes[i], mins[i]
                ));
                break;
            };
            sizes[j] -= 1;
            sizes[i] += 1;
        }
    }
    sizes
}

/// Quotas per stratum (rows, in the order given) and ring (columns): each row adds up to
/// its stratum's size and each column to the ring's size; every cell is the floor or the
/// ceiling of its exact proportion. Where a cell may be either, the ceiling goes first to
/// the cells that hold that many devices now (`current`), so that a ring that grows does
/// not lose a device in one stratum to gain two in another.
pub fn quotas(strata: &[u64], sizes: &[u64], current: &[Vec<u64>]) -> Vec<Vec<u64>> {
    let n: u64 = strata.iter().sum();
    let k = sizes.len();
    if n == 0 || k == 0 {
        return vec![vec![0; k]; strata.len()];
    }
    let exact = |s: u64, r: usize| s as f64 * sizes[r] as f64 / n as f64;
    let mut q: Vec<Vec<u64>> = strata
        .iter()
        .map(|&s| (0..k).map(|r| exact(s, r).floor() as u64).collect())
        .collect();
    let mut col: Vec<u64> = (0..k).map(|r| q.iter().map(|row| row[r]).sum()).collect();
    // First the ceilings that keep the devices where they are.
    for (si, &s) in strata.iter().enumerate() {
        for r in 0..k {
            let left = s - q[si][r..].iter().chain(&q[si][..r]).sum::<u64>();
            let holds = current.get(si).and_then(|c| c.get(r)).copied().unwrap_or(0);
            if left > 0
                && holds > q[si][r]
                && col[r] < sizes[r]
                && exact(s, r) - q[si][r] as f64 > 0.0
            {
                q[si][r] += 1;
                col[r] += 1;
            }
        }
    }
    // Seats left in each row go, by largest remainder, to columns still short of their
    // size (a column that is full takes none), so both sums hold.
    for (si, &s) in strata.iter().enumerate() {
        let mut left = s - q[si].iter().sum::<u64>();
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| {
            let ra = exact(s, a) - exact(s, a).floor();
            let rb = exact(s, b) - exact(s, b).floor();
            let short = |r: usize| sizes[r].saturating_sub(col[r]);
            (short(b) > 0)
                .cmp(&(short(a) > 0))
                .then(rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal))
                .then(a.cmp(&b))
        });
        for &r in &order {
            if left == 0 {
                break;
            }
            if col[r] < sizes[r] && (exact(s, r) - q[si][r] as f64) > 0.0 {
                q[si][r] += 1;
                col[r] += 1;
                left -= 1;
            }
        }
        // What no short column could take with a fraction: any short column, then any.
        for r in (0..k).chain(0..k) {
            if left == 0 {
                break;
            }
            if col[r] < sizes[r] || r == k - 1 {
                q[si][r] += 1;
                col[r] += 1;
                left -= 1;
            }
        }
    }
    q
}

/// Assigns every member a ring (see the module docs).
pub fn assign(spec: &DeviceRingsSpec, members: &[Member]) -> Assignment {
    let mut out = Assignment::default();
    let names: Vec<&str> = spec.rings.iter().map(|r| r.name.as_str()).collect();
    let index = |name: &str| names.iter().position(|n| *n == name);
    let pinned: BTreeMap<&str, usize> = spec
        .pinned
        .iter()
        .filter_map(|(ring, ids)| index(ring).map(|i| (ring, i, ids)))
        .flat_map(|(_, i, ids)| ids.iter().map(move |id| (id.as_str(), i)))
        .collect();

    // Who is fixed where, who ringmaster placed, who is free.
    enum Place {
        Fixed(usize, Reason),
        Placed(usize),
        Free,
    }
    let mut places = Vec::with_capacity(members.len());
    for m in members {
        let hand_set = m.tag.is_some() && m.owned != m.tag;
        if hand_set && let Some(t) = &m.tag {
            out.hand_set.insert(m.id.clone(), t.clone());
        }
        let place = if let Some(&i) = pinned.get(m.id.as_str()) {
            Place::Fixed(i, Reason::Pinned)
        } else if hand_set && spec.hand_set == HandSetPolicy::Leave {
            match m.tag.as_deref().and_then(index) {
                Some(i) => Place::Fixed(i, Reason::HandSet),
                None => Place::Free, // not one of the rings: it gets one (reported)
            }
        } else if !hand_set && let Some(i) = m.tag.as_deref().and_then(index) {
            Place::Placed(i)
        } else {
            Place::Free
        };
        places.push(place);
    }

    let mut strata: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        strata.entry(m.stratum.as_str()).or_default().push(i);
    }
    let sizes = ring_sizes(spec, members.len() as u64, &mut out.problems);
    let stratum_sizes: Vec<u64> = strata.values().map(|v| v.len() as u64).collect();
    let k = names.len();
    let current: Vec<Vec<u64>> = strata
        .values()
        .map(|idx| {
            let mut c = vec![0u64; k];
            for &i in idx {
                if let Place::Fixed(r, _) | Place::Placed(r) = places[i] {
                    c[r] += 1;
                }
            }
            c
        })
        .collect();
    let q = quotas(&stratum_sizes, &sizes, &current);
    let mut final_ring: Vec<Option<usize>> = vec![None; members.len()];
    let salt = spec.salt.as_str();

    for (si, (_, idx)) in strata.iter().enumerate() {
        let mut count = vec![0u64; k];
        let mut kept: Vec<Vec<(u64, usize)>> = vec![Vec::new(); k];
        let mut pool: Vec<(u64, usize)> = Vec::new();
        for &i in idx {
            match places[i] {
                Place::Fixed(r, _) => {
                    final_ring[i] = Some(r);
                    count[r] += 1;
                }
                Place::Placed(r) => kept[r].push((score(salt, &members[i].id), i)),
                Place::Free => pool.push((score(salt, &members[i].id), i)),
            }
        }
        // Rings keep their devices up to the quota; the highest scores go first.
        for r in 0..k {
            kept[r].sort();
            let room = q[si][r].saturating_sub(count[r]) as usize;
            if kept[r].len() > room {
                pool.extend(kept[r].drain(room..));
            }
            for &(_, i) in &kept[r] {
                final_ring[i] = Some(r);
            }
            count[r] += kept[r].len() as u64;
        }
        // The free devices fill the rings short of their quota, lowest score first.
        pool.sort();
        let mut pool = pool.into_iter();
        'fill: for r in 0..k {
            while count[r] < q[si][r] {
                let Some((_, i)) = pool.next() else {
                    break 'fill;
                };
                final_ring[i] = Some(r);
                count[r] += 1;
            }
        }
        // Quotas taken by fixed devices elsewhere: what is left goes to the last ring.
        for (_, i) in pool {
            final_ring[i] = Some(k - 1);
        }
    }

    for (i, m) in members.iter().enumerate() {
        let Some(r) = final_ring[i] else { continue };
        let ring = names[r].to_string();
        *out.per_ring.entry(ring.clone()).or_default() += 1;
        *out.per_stratum
            .entry(m.stratum.clone())
            .or_default()
            .entry(ring.clone())
            .or_default() += 1;
        let fixed_hand_set = matches!(places[i], Place::Fixed(_, Reason::HandSet));
        if !fixed_hand_set && (m.tag.as_deref() != Some(&ring) || m.owned.as_deref() != Some(&ring))
        {
            out.writes.push((m.id.clone(), ring.clone()));
        }
        if let Place::Placed(before) = places[i]
            && before != r
        {
            out.moved += 1;
        }
        out.ring_of.insert(m.id.clone(), ring);
    }
    for name in &names {
        out.per_ring.entry(name.to_string()).or_default();
    }
    out
}

#[cfg(test)]
mod tests;
