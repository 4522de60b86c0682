use super::*;

fn snapshot(node: NodeId, incarnation: u64, filters: &[&str]) -> Update {
    Update::Snapshot {
        node,
        incarnation,
        seq: 0,
        filters: filters.iter().map(|f| f.to_string()).collect(),
    }
}

fn delta(node: NodeId, incarnation: u64, from: u64, added: &[&str], removed: &[&str]) -> Update {
    Update::Delta {
        node,
        incarnation,
        from,
        to: from + 1,
        added: added.iter().map(|f| f.to_string()).collect(),
        removed: removed.iter().map(|f| f.to_string()).collect(),
    }
}

fn nodes(r: &RemoteRoutes, topic: &str) -> Vec<NodeId> {
    let mut out = Vec::new();
    r.matching(topic, &mut out);
    out.sort_unstable();
    out
}

#[test]
fn wildcards_match_as_the_spec_says_and_each_node_once() {
    let mut r = RemoteRoutes::default();
    r.apply(snapshot(2, 1, &["home/+/temp", "home/#", "a/b"]));
    r.apply(snapshot(3, 1, &["#", "+/x"]));
    r.apply(snapshot(4, 1, &["$SYS/#", "home/kitchen/temp"]));
    assert_eq!(nodes(&r, "home/kitchen/temp"), [2, 3, 4]);
    assert_eq!(nodes(&r, "home"), [2, 3], "a/# matches a");
    assert_eq!(nodes(&r, "a/b"), [2, 3]);
    assert_eq!(nodes(&r, "a/b/c"), [3]);
    assert_eq!(nodes(&r, "q/x"), [3]);
    // A leading wildcard never matches a `$` topic.
    assert_eq!(nodes(&r, "$SYS/broker/load"), [4]);
    assert_eq!(nodes(&r, "$x"), Vec::<NodeId>::new());
    assert_eq!(r.len(), 7);
}

#[test]
fn deltas_follow_in_order_and_a_gap_asks_for_a_snapshot() {
    let mut r = RemoteRoutes::default();
    assert_eq!(
        r.apply(delta(2, 1, 0, &["a"], &[])),
        UpdateReply::NeedSnapshot
    );
    assert_eq!(r.apply(snapshot(2, 1, &["a", "b/#"])), UpdateReply::Applied);
    assert_eq!(
        r.apply(delta(2, 1, 0, &["c"], &["a"])),
        UpdateReply::Applied
    );
    assert_eq!(nodes(&r, "a"), Vec::<NodeId>::new());
    assert_eq!(nodes(&r, "c"), [2]);
    // A gap, and a delta of another life of the node: both need a snapshot.
    assert_eq!(
        r.apply(delta(2, 1, 2, &["d"], &[])),
        UpdateReply::NeedSnapshot
    );
    assert_eq!(
        r.apply(delta(2, 2, 1, &["d"], &[])),
        UpdateReply::NeedSnapshot
    );
    assert_eq!(r.filters_of(2), ["b/#", "c"]);
    // A new life replaces the old one's filters; a late snapshot of the old life is ignored.
    r.apply(snapshot(2, 2, &["z"]));
    r.apply(snapshot(2, 1, &["old"]));
    assert_eq!(r.filters_of(2), ["z"]);
    assert_eq!(nodes(&r, "b/x"), Vec::<NodeId>::new());
    r.forget(2);
    assert!(r.is_empty());
    assert!(r.root.is_empty(), "the trie is pruned: {:?}", r.root);
}

#[test]
fn removing_prunes_only_what_no_other_node_uses() {
    let mut r = RemoteRoutes::default();
    r.apply(snapshot(2, 1, &["a/b/c", "a/+"]));
    r.apply(snapshot(3, 1, &["a/b/c"]));
    r.apply(delta(2, 1, 0, &[], &["a/b/c"]));
    assert_eq!(nodes(&r, "a/b/c"), [3]);
    assert_eq!(nodes(&r, "a/b"), [2]);
    r.forget(3);
    r.forget(2);
    assert!(r.root.is_empty());
}

#[test]
fn local_filters_count_subscriptions_and_give_net_changes() {
    let l = LocalFilters::default();
    l.change("a", true);
    l.change("a", true); // a second subscriber: not a change
    l.change("b", true);
    assert_eq!(l.snapshot(), (2, vec!["a".to_string(), "b".to_string()]));
    l.change("a", false); // one subscriber left
    l.change("b", false);
    l.change("c", true);
    l.change("c", false);
    l.change("b", true);
    // After change 2: b went and came back (net: nothing to remove, added again is harmless),
    // c came and went.
    let (to, added, removed) = l.since(2).unwrap();
    assert_eq!(to, 6);
    assert_eq!(added, ["b"]);
    assert_eq!(removed, ["c"]);
    assert_eq!(l.since(6), Some((6, vec![], vec![])));
    // Applied to what a peer had at 2, the deltas give the snapshot.
    let mut r = RemoteRoutes::default();
    let filters = vec!["a".to_string(), "b".to_string()];
    r.apply(Update::Snapshot {
        node: 1,
        incarnation: 1,
        seq: 2,
        filters,
    });
    let d = Update::Delta {
        node: 1,
        incarnation: 1,
        from: 2,
        to,
        added,
        removed,
    };
    assert_eq!(r.apply(d), UpdateReply::Applied);
    assert_eq!(r.filters_of(1), l.snapshot().1);
}

#[test]
fn a_peer_too_far_behind_gets_a_snapshot() {
    let l = LocalFilters::default();
    for i in 0..(MAX_CHANGES + 10) {
        l.change(&format!("f/{i}"), true);
    }
    assert_eq!(l.since(0), None);
    assert!(l.since((MAX_CHANGES + 5) as u64).is_some());
}

#[test]
fn shared_groups_are_kept_apart_with_the_nodes_that_have_members() {
    let mut r = RemoteRoutes::default();
    r.apply(snapshot(2, 1, &["$share/g/jobs/#", "jobs/plain"]));
    r.apply(snapshot(3, 1, &["$share/g/jobs/#", "$share/h/jobs/+"]));
    let mut m = Matches::default();
    r.matches("jobs/plain", &mut m);
    m.nodes.sort_unstable();
    assert_eq!(m.nodes, [2], "only node 2 has a plain subscription");
    let groups: Vec<(String, Vec<NodeId>)> = m
        .groups
        .iter()
        .map(|(g, n)| {
            let mut n = n.clone();
            n.sort_unstable();
            (g.to_string(), n)
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("$share/g/jobs/#".to_owned(), vec![2, 3]),
            ("$share/h/jobs/+".to_owned(), vec![3])
        ]
    );
    // Shared filters are not plain routes.
    assert_eq!(nodes(&r, "jobs/x/y"), Vec::<NodeId>::new());
    r.apply(delta(3, 1, 0, &[], &["$share/g/jobs/#"]));
    let mut m = Matches::default();
    r.matches("jobs/x", &mut m);
    assert_eq!(m.groups.get("$share/g/jobs/#").cloned(), Some(vec![2]));
    assert_eq!(m.groups.get("$share/h/jobs/+").cloned(), Some(vec![3]));
    r.forget(2);
    r.forget(3);
    assert!(r.root.is_empty(), "pruned");
}

#[test]
fn a_peer_beyond_the_bound_of_peers_is_not_kept() {
    let mut r = RemoteRoutes::default();
    for node in 0..MAX_NODES as u64 {
        r.apply(snapshot(node, 1, &["a"]));
    }
    assert_eq!(r.refused(), 0);
    r.apply(snapshot(9_999, 1, &["a", "b"]));
    assert_eq!(r.refused(), 2);
    assert!(nodes(&r, "b").is_empty());
    // A peer already known still updates.
    r.apply(snapshot(0, 2, &["b"]));
    assert_eq!(nodes(&r, "b"), [0]);
}
