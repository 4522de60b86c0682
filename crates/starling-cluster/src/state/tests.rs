use proptest::prelude::*;

use super::*;

fn retained(payload: &[u8], expires_at_ms: Option<u64>) -> Retained {
    Retained {
        qos: 1,
        payload: payload.to_vec(),
        header: Vec::new(),
        expires_at_ms,
    }
}

fn claim(client: &str, node: NodeId, incarnation: u64) -> Command {
    Command::Claim {
        client_id: client.into(),
        node,
        incarnation,
    }
}

#[test]
fn a_claim_takes_the_client_id_over_and_names_the_previous_owner() {
    let mut s = ClusterState::default();
    assert_eq!(
        s.apply(
            1,
            Command::Incarnate {
                node: 1,
                incarnation: 7
            }
        ),
        Outcome::Done
    );
    assert_eq!(
        s.apply(
            2,
            Command::Incarnate {
                node: 2,
                incarnation: 3
            }
        ),
        Outcome::Done
    );
    let first = Owner {
        node: 1,
        incarnation: 7,
        epoch: 3,
    };
    assert_eq!(
        s.apply(3, claim("c", 1, 7)),
        Outcome::Claimed {
            owner: first,
            previous: None
        }
    );
    let second = Owner {
        node: 2,
        incarnation: 3,
        epoch: 4,
    };
    assert_eq!(
        s.apply(4, claim("c", 2, 3)),
        Outcome::Claimed {
            owner: second,
            previous: Some(first)
        }
    );
    assert_eq!(s.owner("c"), Some(second));
}

#[test]
fn a_release_from_a_taken_over_connection_does_not_undo_the_takeover() {
    let mut s = ClusterState::default();
    s.apply(
        1,
        Command::Incarnate {
            node: 1,
            incarnation: 1,
        },
    );
    s.apply(2, claim("c", 1, 1));
    s.apply(3, claim("c", 1, 1));
    let late = Command::Release {
        client_id: "c".into(),
        epoch: 2,
    };
    assert_eq!(s.apply(4, late), Outcome::Refused(Refusal::StaleRelease));
    assert_eq!(s.owner("c").map(|o| o.epoch), Some(3));
    let current = Command::Release {
        client_id: "c".into(),
        epoch: 3,
    };
    assert_eq!(s.apply(5, current), Outcome::Released);
    assert_eq!(s.owner("c"), None);
}

#[test]
fn claims_from_an_older_incarnation_or_an_unknown_node_are_refused() {
    let mut s = ClusterState::default();
    assert_eq!(
        s.apply(1, claim("c", 1, 1)),
        Outcome::Refused(Refusal::StaleClaim)
    );
    s.apply(
        2,
        Command::Incarnate {
            node: 1,
            incarnation: 1,
        },
    );
    s.apply(
        3,
        Command::Incarnate {
            node: 1,
            incarnation: 2,
        },
    );
    assert_eq!(
        s.apply(4, claim("c", 1, 1)),
        Outcome::Refused(Refusal::StaleClaim)
    );
    assert_eq!(
        s.apply(
            5,
            Command::Incarnate {
                node: 1,
                incarnation: 2
            }
        ),
        Outcome::Refused(Refusal::StaleIncarnation)
    );
    assert_eq!(s.incarnation(1), Some(2));
    assert_eq!(s.owner("c"), None);
}

#[test]
fn retained_messages_are_bounded_in_number_and_size() {
    let mut s = ClusterState::new(Limits {
        max_retained: 2,
        max_retained_payload: 4,
    });
    let set = |t: &str, p: &[u8]| Command::Retain {
        topic: t.into(),
        message: retained(p, None),
    };
    assert_eq!(s.apply(1, set("a", b"1234")), Outcome::Done);
    assert_eq!(
        s.apply(2, set("b", b"12345")),
        Outcome::Refused(Refusal::RetainedTooLarge)
    );
    assert_eq!(s.apply(3, set("b", b"12")), Outcome::Done);
    assert_eq!(
        s.apply(4, set("c", b"1")),
        Outcome::Refused(Refusal::RetainedFull)
    );
    // Replacing a topic that is kept is not a new one.
    assert_eq!(s.apply(5, set("a", b"1")), Outcome::Done);
    assert_eq!(s.retained_size(), (2, 3));
    assert_eq!(
        s.apply(6, Command::ClearRetained { topic: "a".into() }),
        Outcome::Done
    );
    assert_eq!(s.apply(7, set("c", b"1")), Outcome::Done);
    assert_eq!(s.retained_size(), (2, 3));
    assert_eq!(
        s.retained("c").map(|m| m.payload.as_slice()),
        Some(&b"1"[..])
    );
}

#[test]
fn expiry_drops_what_is_due_by_the_time_in_the_command() {
    let mut s = ClusterState::default();
    let set = |t: &str, at| Command::Retain {
        topic: t.into(),
        message: retained(b"xy", at),
    };
    s.apply(1, set("a", Some(100)));
    s.apply(2, set("b", Some(200)));
    s.apply(3, set("c", None));
    assert_eq!(
        s.apply(4, Command::ExpireRetained { now_ms: 100 }),
        Outcome::Expired { count: 1 }
    );
    assert_eq!(s.retained_size(), (2, 4));
    assert_eq!(
        s.apply(5, Command::ExpireRetained { now_ms: 10_000 }),
        Outcome::Expired { count: 1 }
    );
    let topics: Vec<_> = s.all_retained().map(|(t, _)| t.to_owned()).collect();
    assert_eq!(topics, ["c"]);
}

#[test]
fn a_batch_applies_each_change_in_order_and_refuses_each_on_its_own() {
    let mut s = ClusterState::new(Limits {
        max_retained: 2,
        max_retained_payload: 4,
    });
    let out = s.apply(
        1,
        Command::RetainBatch {
            changes: vec![
                ("a".into(), Some(retained(b"1", None))),
                ("b".into(), Some(retained(b"12345", None))),
                ("b".into(), Some(retained(b"2", None))),
                ("c".into(), Some(retained(b"3", None))),
                ("a".into(), None),
                ("a".into(), Some(retained(b"4", Some(50)))),
            ],
        },
    );
    assert_eq!(
        out,
        Outcome::Batch(vec![
            Outcome::Done,
            Outcome::Refused(Refusal::RetainedTooLarge),
            Outcome::Done,
            Outcome::Refused(Refusal::RetainedFull),
            Outcome::Done,
            Outcome::Done,
        ])
    );
    let kept: Vec<_> = s
        .all_retained()
        .map(|(t, m)| (t.to_owned(), m.payload.clone()))
        .collect();
    assert_eq!(
        kept,
        [("a".into(), b"4".to_vec()), ("b".into(), b"2".to_vec())]
    );
    assert_eq!(s.expiring(49), Vec::<String>::new());
    assert_eq!(s.expiring(50), ["a"]);
}

pub(crate) fn command() -> impl Strategy<Value = Command> {
    let client = prop::sample::select(vec!["a", "b", "c"]);
    let topic = prop::sample::select(vec!["t/1", "t/2", "t/3", "t/4"]);
    prop_oneof![
        (1..4u64, 1..4u64).prop_map(|(node, incarnation)| Command::Incarnate { node, incarnation }),
        (client.clone(), 1..4u64, 1..4u64).prop_map(|(c, node, incarnation)| claim(
            c,
            node,
            incarnation
        )),
        (client, 0..40u64).prop_map(|(c, epoch)| Command::Release {
            client_id: c.into(),
            epoch
        }),
        (
            topic.clone(),
            prop::collection::vec(any::<u8>(), 1..8),
            prop::option::of(0..100u64)
        )
            .prop_map(|(t, p, at)| Command::Retain {
                topic: t.into(),
                message: retained(&p, at)
            }),
        topic
            .clone()
            .prop_map(|t| Command::ClearRetained { topic: t.into() }),
        (0..100u64).prop_map(|now_ms| Command::ExpireRetained { now_ms }),
        (1..4u64, 1..4u64).prop_map(|(node, incarnation)| Command::NodeDown { node, incarnation }),
        (1..4u64, 1..4u64).prop_map(|(node, incarnation)| Command::NodeUp { node, incarnation }),
        prop::collection::vec(
            (
                topic,
                prop::option::of((
                    prop::collection::vec(any::<u8>(), 0..8),
                    prop::option::of(0..100u64)
                ))
            ),
            0..4
        )
        .prop_map(|changes| Command::RetainBatch {
            changes: changes
                .into_iter()
                .map(|(t, m)| (t.to_owned(), m.map(|(p, at)| retained(&p, at))))
                .collect()
        }),
    ]
}

proptest! {
    /// Over any log: epochs are unique and grow, an owner's incarnation is its node's current
    /// one when it claimed, the retained accounting matches the messages and the bounds hold,
    /// and two replicas applying the same log hold the same bytes.
    #[test]
    fn invariants_hold_over_any_log(cmds in prop::collection::vec(command(), 0..60)) {
        let limits = Limits { max_retained: 3, max_retained_payload: 6 };
        let mut a = ClusterState::new(limits);
        let mut b = ClusterState::new(limits);
        let mut last_epoch = 0;
        for (i, cmd) in cmds.into_iter().enumerate() {
            let index = i as u64 + 1;
            let out = a.apply(index, cmd.clone());
            prop_assert_eq!(&out, &b.apply(index, cmd));
            if let Outcome::Claimed { owner, previous } = out {
                prop_assert!(owner.epoch > last_epoch);
                prop_assert!(previous.is_none_or(|p| p.epoch < owner.epoch));
                prop_assert_eq!(a.incarnation(owner.node), Some(owner.incarnation));
                last_epoch = owner.epoch;
            }
            let (count, bytes) = a.retained_size();
            prop_assert!(count <= limits.max_retained);
            let sum: u64 = a.all_retained().map(|(_, m)| m.payload.len() as u64).sum();
            prop_assert_eq!(bytes, sum);
            prop_assert!(a.all_retained().all(|(_, m)| !m.payload.is_empty()));
        }
        prop_assert_eq!(postcard::to_allocvec(&a).ok(), postcard::to_allocvec(&b).ok());
    }
}

/// The leader's judgement that a node is down holds for its current incarnation only, ends
/// when it answers again (`NodeUp`) or starts again (a new incarnation), and a snapshot
/// written before the down marks existed is read back with nothing down.
#[test]
fn a_node_is_down_in_its_current_incarnation_until_it_answers_or_restarts() {
    let mut s = ClusterState::new(Limits::default());
    s.apply(
        1,
        Command::Incarnate {
            node: 2,
            incarnation: 1,
        },
    );
    assert_eq!(
        s.apply(
            2,
            Command::NodeDown {
                node: 2,
                incarnation: 7
            }
        ),
        Outcome::Refused(Refusal::StaleIncarnation)
    );
    assert_eq!(
        s.apply(
            3,
            Command::NodeDown {
                node: 9,
                incarnation: 1
            }
        ),
        Outcome::Refused(Refusal::StaleIncarnation),
        "a node never announced"
    );
    assert_eq!(
        s.apply(
            4,
            Command::NodeDown {
                node: 2,
                incarnation: 1
            }
        ),
        Outcome::Done
    );
    assert!(s.is_down(2));
    assert_eq!(
        s.apply(
            5,
            Command::NodeUp {
                node: 2,
                incarnation: 1
            }
        ),
        Outcome::Done
    );
    assert!(!s.is_down(2));
    s.apply(
        6,
        Command::NodeDown {
            node: 2,
            incarnation: 1,
        },
    );
    s.apply(
        7,
        Command::Incarnate {
            node: 2,
            incarnation: 2,
        },
    );
    assert!(!s.is_down(2), "a new life is not down");
    assert_eq!(s.down().count(), 0);

    // The layout before the down marks: the same fields, without the last.
    #[derive(serde::Serialize)]
    struct Old {
        limits: Limits,
        incarnations: std::collections::BTreeMap<NodeId, u64>,
        owners: std::collections::BTreeMap<String, Owner>,
        retained: std::collections::BTreeMap<String, Retained>,
        retained_bytes: u64,
    }
    let old = Old {
        limits: Limits::default(),
        incarnations: [(2, 5)].into(),
        owners: Default::default(),
        retained: Default::default(),
        retained_bytes: 0,
    };
    let bytes = postcard::to_allocvec(&old).unwrap();
    let back = ClusterState::from_stored(&bytes).unwrap();
    assert_eq!(back.incarnation(2), Some(5));
    assert_eq!(back.down().count(), 0);
    let mut now = back.clone();
    now.apply(
        8,
        Command::NodeDown {
            node: 2,
            incarnation: 5,
        },
    );
    let again = ClusterState::from_stored(&postcard::to_allocvec(&now).unwrap()).unwrap();
    assert_eq!(again, now, "the current layout round-trips");
    assert!(ClusterState::from_stored(&[0xff, 0xff]).is_err());
}
