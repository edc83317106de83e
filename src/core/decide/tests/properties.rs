//! Properties: invariants that hold under any sequence of hub cycles, requests, content
//! changes and lost statuses.

use super::*;

#[derive(Clone, Debug)]
enum Event {
    Advance(i64),
    Refresh,
    Step,
    /// A reconcile as the controller runs it: step, let the hub recompute, sleep the requeue.
    Cycle,
    SetFailure(u8),
    NewContent(u8),
    Op(OperationKind),
    LoseStatus,
    Uncovered(u8),
    WriteBudget(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => (1i64..120).prop_map(Event::Advance),
        1 => Just(Event::Refresh),
        2 => Just(Event::Step),
        20 => Just(Event::Cycle),
        1 => (0u8..4).prop_map(Event::SetFailure),
        1 => (0u8..3).prop_map(Event::NewContent),
        1 => prop_oneof![
            Just(OperationKind::Pause),
            Just(OperationKind::Resume),
            Just(OperationKind::Abort),
            Just(OperationKind::Retry),
        ]
        .prop_map(Event::Op),
        1 => Just(Event::LoseStatus),
        1 => (0u8..3).prop_map(|u| Event::Uncovered(u.saturating_sub(1))),
        1 => (0u8..4).prop_map(Event::WriteBudget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Never widens without a Pass, never more than one unfinished revision, never spins.
    #[test]
    fn invariants_hold_under_any_sequence(events in proptest::collection::vec(event(), 1..120), pause in any::<bool>()) {
        let mut ro = rollout();
        if pause {
            ro.spec.on_failure = OnFailure::Pause;
        }
        let mut s = Sim::new(ro);
        let mut n = 0;
        for e in events {
            match e.clone() {
                Event::Advance(m) => s.advance(mins(m)),
                Event::Refresh => s.refresh(),
                Event::Step | Event::Cycle => {
                    let before: BTreeMap<String, (usize, ConfigState)> =
                        s.ours().iter().map(|(l, c)| (c.id.clone(), (l.ring, l.state))).collect();
                    let records = s.status.rings.clone();
                    let d = s.step();
                    for a in &d.actions {
                        if let Action::Update { config, .. } = a {
                            let l = ConfigLabels::read(config).unwrap();
                            if let Some(&(ring, ConfigState::Rolling)) = before.get(&config.id)
                                && l.state == ConfigState::Rolling
                                && l.ring > ring
                            {
                                // Widening: the ring it leaves passed (in this decision or earlier).
                                let passed = d.status.rings.get(ring).and_then(|r| r.verdict) == Some(Verdict::Pass)
                                    || records.get(ring).and_then(|r| r.verdict) == Some(Verdict::Pass);
                                prop_assert!(passed, "widened from ring {} without a Pass: {:?}", ring, d.status.rings);
                                prop_assert_eq!(l.ring, ring + 1, "widened by more than one ring");
                            }
                        }
                    }
                    let unfinished = s.ours().iter().filter(|(l, _)| l.state == ConfigState::Rolling).count();
                    prop_assert!(unfinished <= 1, "{} unfinished revisions", unfinished);
                    prop_assert!(d.requeue_after >= MIN_REQUEUE);
                    prop_assert!(d.status.history.len() <= status::MAX_HISTORY);
                    if matches!(e, Event::Cycle) {
                        s.refresh();
                        s.advance(d.requeue_after);
                    }
                }
                Event::SetFailure(r) => {
                    let v = SimVersion::of(&s.ro);
                    s.fail_rate.insert(v, [0.0, 0.0, 0.01, 0.5][r as usize]);
                }
                Event::NewContent(v) => set_version(&mut s.ro, ["2.4.0", "2.5.0", "2.6.0"][v as usize]),
                Event::Op(kind) => {
                    n += 1;
                    s.op(&format!("op{n}"), kind);
                }
                Event::LoseStatus => s.status = DeviceRolloutStatus::default(),
                Event::Uncovered(u) => s.uncovered = u as u64,
                Event::WriteBudget(w) => s.budget.writes = w as u32,
            }
        }
    }
}

struct SimVersion;
impl SimVersion {
    fn of(ro: &DeviceRollout) -> String {
        ro.spec.content.device["properties.desired.firmware"]["version"]
            .as_str()
            .unwrap()
            .to_string()
    }
}
