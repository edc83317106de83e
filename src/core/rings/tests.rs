//! The assignment's promises: proportions and strata, stability, minimal movement,
//! pinned and hand-set devices.

use super::*;
use crate::resources::{DeviceRings, RingShare};
use proptest::prelude::*;

fn spec(percents: &[(&str, f64)]) -> DeviceRingsSpec {
    DeviceRingsSpec {
        hub: None,
        target: "*".into(),
        tag: "ring".into(),
        rings: percents
            .iter()
            .map(|(n, p)| RingShare {
                name: n.to_string(),
                percent: *p,
                min_devices: None,
            })
            .collect(),
        spread_by: vec!["tags.model".into(), "tags.region".into()],
        pinned: BTreeMap::new(),
        salt: "2026-11".into(),
        hand_set: HandSetPolicy::Leave,
        suspend: false,
    }
}

fn chillers() -> DeviceRingsSpec {
    spec(&[("canary", 2.0), ("early", 18.0), ("broad", 80.0)])
}

/// `n` untagged devices over 3 models × 2 regions in uneven shares.
fn fleet(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| {
            let model = ["4000x", "4000x", "4000x", "5000x", "5000x", "6000x"][i % 6];
            let region = if i % 7 < 5 { "eu" } else { "us" };
            Member {
                id: format!("dev-{i:06}"),
                stratum: format!("{model}/{region}"),
                tag: None,
                owned: None,
            }
        })
        .collect()
}

/// The members after the assignment's writes are done.
fn written(members: &[Member], a: &Assignment) -> Vec<Member> {
    let writes: BTreeMap<&str, &String> = a.writes.iter().map(|(id, r)| (id.as_str(), r)).collect();
    members
        .iter()
        .map(|m| {
            let ring = a.ring_of.get(&m.id).cloned();
            match writes.get(m.id.as_str()) {
                Some(r) => Member {
                    tag: Some(r.to_string()),
                    owned: Some(r.to_string()),
                    ..m.clone()
                },
                None => Member {
                    tag: m.tag.clone().or(ring),
                    ..m.clone()
                },
            }
        })
        .collect()
}

#[test]
fn a_thousand_untagged_devices_get_rings_in_proportion_and_strata() {
    let members = fleet(1000);
    let a = assign(&chillers(), &members);
    assert_eq!(a.writes.len(), 1000);
    assert_eq!(a.per_ring["canary"], 20);
    assert_eq!(a.per_ring["early"], 180);
    assert_eq!(a.per_ring["broad"], 800);
    // Each stratum is in every ring in its proportion, within one device.
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for m in &members {
        *sizes.entry(m.stratum.as_str()).or_default() += 1;
    }
    for (stratum, n) in sizes {
        for (ring, pct) in [("canary", 2.0), ("early", 18.0), ("broad", 80.0)] {
            let got = a.per_stratum[stratum].get(ring).copied().unwrap_or(0) as f64;
            let exact = n as f64 * pct / 100.0;
            assert!(
                (got - exact).abs() < 1.0 + 1e-9,
                "{stratum} in {ring}: {got}, exact {exact}"
            );
        }
    }
    assert!(a.problems.is_empty());
    assert_eq!(a.moved, 0);
}

#[test]
fn growing_canary_keeps_every_canary_device_and_moves_only_the_growth() {
    for n in [1000usize, 100_000] {
        let members = fleet(n);
        let before = assign(&chillers(), &members);
        let tagged = written(&members, &before);
        assert!(assign(&chillers(), &tagged).writes.is_empty(), "stable");
        let grown = spec(&[("canary", 5.0), ("early", 15.0), ("broad", 80.0)]);
        let after = assign(&grown, &tagged);
        for (id, ring) in &before.ring_of {
            if ring == "canary" {
                assert_eq!(after.ring_of[id], "canary", "{id} left canary");
            }
            if ring == "broad" {
                assert_eq!(after.ring_of[id], "broad", "{id} moved from broad");
            }
        }
        let growth = after.per_ring["canary"] - before.per_ring["canary"];
        assert_eq!(after.moved, growth, "only the growth moves");
        assert_eq!(after.writes.len() as u64, growth);
        assert_eq!(growth as usize, n * 3 / 100);
        println!("{n} devices, canary 2% -> 5%: {} moved", after.moved);
    }
}

#[test]
fn a_device_that_joins_fills_a_short_ring_and_nobody_moves_for_it() {
    let members = fleet(1000);
    let mut tagged = written(&members, &assign(&chillers(), &members));
    tagged.push(Member {
        id: "new-1".into(),
        stratum: "4000x/eu".into(),
        tag: None,
        owned: None,
    });
    let a = assign(&chillers(), &tagged);
    assert_eq!(a.writes.len(), 1, "{:?}", a.writes);
    assert_eq!(a.writes[0].0, "new-1");
    assert_eq!(a.moved, 0);
}

#[test]
fn pinned_and_hand_set_devices_stay_and_are_counted() {
    let mut s = chillers();
    s.pinned.insert("canary".into(), vec!["dev-000500".into()]);
    let mut members = fleet(1000);
    members[7].tag = Some("early".into()); // set by someone else
    let a = assign(&s, &members);
    assert_eq!(a.ring_of["dev-000500"], "canary");
    assert_eq!(a.ring_of["dev-000007"], "early");
    assert_eq!(a.hand_set["dev-000007"], "early");
    assert!(
        !a.writes.iter().any(|(id, _)| id == "dev-000007"),
        "left alone"
    );
    assert_eq!(a.per_ring["canary"], 20);
    s.hand_set = HandSetPolicy::Correct;
    let a = assign(&s, &members);
    assert!(a.hand_set.contains_key("dev-000007"), "still reported");
    assert!(
        a.writes.iter().any(|(id, _)| id == "dev-000007"),
        "corrected"
    );
}

#[test]
fn min_devices_takes_from_the_later_rings_and_says_when_it_cannot() {
    let mut s = chillers();
    s.rings[0].min_devices = Some(20);
    let a = assign(&s, &fleet(200));
    assert_eq!(a.per_ring["canary"], 20);
    assert_eq!(a.per_ring["early"], 36);
    assert_eq!(a.per_ring["broad"], 144);
    let a = assign(&s, &fleet(10));
    assert_eq!(a.per_ring["canary"], 10);
    assert!(
        a.problems[0].contains("minDevices is 20"),
        "{:?}",
        a.problems
    );
}

#[test]
fn the_example_validates_and_bad_specs_name_their_fields() {
    let mut r = DeviceRings::new("chillers", chillers());
    assert!(validate::validate_rings(&r).is_empty());
    r.spec.rings[0].percent = 3.0;
    r.spec.tag = "a.b".into();
    r.spec.spread_by.push("properties.reported.x".into());
    r.spec.pinned.insert("nope".into(), vec!["x".into()]);
    let e: Vec<String> = validate::validate_rings(&r)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let all = e.join("\n");
    assert!(all.contains("spec.rings: percents add up to 101"), "{all}");
    assert!(all.contains("spec.tag:"), "{all}");
    assert!(all.contains("spec.spreadBy[2]"), "{all}");
    assert!(all.contains("spec.pinned.nope"), "{all}");
}

fn arb_percents() -> impl Strategy<Value = Vec<f64>> {
    // Three rings in whole percents that add up to 100.
    (0u32..=100, 0u32..=100).prop_map(|(a, b)| {
        let (lo, hi) = (a.min(b), a.max(b));
        vec![lo as f64, (hi - lo) as f64, (100 - hi) as f64]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any percent change moves only as many devices as the rings' sizes force, and a
    /// second pass writes nothing.
    #[test]
    fn percent_changes_move_the_fewest_devices(
        n in 1usize..600,
        from in arb_percents(),
        to in arb_percents(),
    ) {
        let mk = |p: &[f64]| spec(&[("a", p[0]), ("b", p[1]), ("c", p[2])]);
        let members = fleet(n);
        let a1 = assign(&mk(&from), &members);
        prop_assert_eq!(a1.ring_of.len(), n);
        let tagged = written(&members, &a1);
        prop_assert!(assign(&mk(&from), &tagged).writes.is_empty());
        let a2 = assign(&mk(&to), &tagged);
        // Per stratum and ring, the devices that must leave a ring are its shrinkage.
        let mut forced = 0u64;
        for (stratum, rings) in &a1.per_stratum {
            for (ring, before) in rings {
                let after = a2.per_stratum.get(stratum).and_then(|r| r.get(ring)).copied().unwrap_or(0);
                forced += before.saturating_sub(after);
            }
        }
        prop_assert_eq!(a2.moved, forced);
        // Every ring is within one device per stratum of its exact share.
        let strata = a2.per_stratum.len() as f64;
        for (i, ring) in ["a", "b", "c"].iter().enumerate() {
            let got = a2.per_ring.get(*ring).copied().unwrap_or(0) as f64;
            prop_assert!((got - n as f64 * to[i] / 100.0).abs() <= strata.max(1.0));
        }
        let tagged2 = written(&tagged, &a2);
        prop_assert!(assign(&mk(&to), &tagged2).writes.is_empty());
    }

    /// Growing ring a never takes a device out of it; devices of c stay when c keeps its share.
    #[test]
    fn growing_the_first_ring_only_adds(n in 1usize..600, p in 0u32..50, extra in 0u32..50) {
        let mk = |a: u32| spec(&[("a", a as f64), ("b", (50 - a) as f64), ("c", 50.0)]);
        prop_assume!(p + extra <= 50);
        let members = fleet(n);
        let a1 = assign(&mk(p), &members);
        let tagged = written(&members, &a1);
        let a2 = assign(&mk(p + extra), &tagged);
        for (id, ring) in &a1.ring_of {
            if ring == "a" {
                prop_assert_eq!(&a2.ring_of[id], "a");
            }
        }
    }
}
