//! Tests of the redb store against the in-memory reference, and of its file: layout, damage,
//! reopening, shared payloads.

use super::*;
use crate::{MemoryStore, MessagePhase, SubscriptionRecord};
use redb::ReadableTableMetadata;

fn msg(n: u8) -> MessageRecord {
    MessageRecord {
        packet: vec![n; 3],
        payload: None,
        expires_at_ms: Some(u64::from(n)),
        phase: MessagePhase::Queued,
        packet_id: 0,
    }
}

fn session(expiry: u32) -> SessionRecord {
    SessionRecord {
        protocol: 4,
        expiry_secs: expiry,
        disconnected_at_ms: None,
        subscriptions: vec![SubscriptionRecord {
            filter: "t/#".into(),
            options: 1,
            id: None,
        }],
        will: None,
    }
}

/// A record naming a body that is missing (damage) stays damaged: a new body never takes
/// its number.
#[test]
fn a_missing_body_number_is_never_given_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    s.apply(&[Op::PutSession("a".into(), session(10))], true)
        .unwrap();
    {
        let g = s.lock();
        let txn = RedbStore::db(&g).unwrap().begin_write().unwrap();
        {
            let mut numbers = txn.open_table(NUMBERS).unwrap();
            numbers.insert("a", 1).unwrap();
            let mut t = txn.open_table(MESSAGES).unwrap();
            t.insert((1u64, 1u64), msg(1).encode_stored(Some(5)).as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    s.reopen().unwrap();
    let shared = MessageRecord {
        payload: Some(crate::SharedPayload {
            key: 1,
            bytes: vec![1u8; 100].into(),
        }),
        ..msg(2)
    };
    s.apply(&[Op::PutMessage("a".into(), 2, shared)], true)
        .unwrap();
    let err = s.load(false).unwrap_err();
    assert!(err.to_string().contains("payload 5"), "{err}");
    let snap = s.load(true).unwrap();
    assert_eq!(snap.skipped.len(), 1);
    assert_eq!(snap.sessions[0].messages.len(), 1);
}

/// The redb store and the in-memory reference give the same snapshot for the same ops.
fn bodies_in_file(s: &RedbStore) -> u64 {
    let g = s.lock();
    let txn = RedbStore::db(&g).unwrap().begin_read().unwrap();
    txn.open_table(BODIES).unwrap().len().unwrap()
}

#[test]
fn a_shared_payload_is_written_once_and_deleted_with_its_last_reference() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    let m = MemoryStore::new();
    let shared = |n: u8| MessageRecord {
        payload: Some(crate::SharedPayload {
            key: 0x10,
            bytes: vec![7u8; 1000].into(),
        }),
        ..msg(n)
    };
    let batches = [
        vec![
            Op::PutSession("a".into(), session(10)),
            Op::PutSession("b".into(), session(10)),
            Op::PutMessage("a".into(), 1, shared(1)),
            Op::PutMessage("b".into(), 1, shared(2)),
            Op::PutMessage("a".into(), 2, shared(3)),
        ],
        vec![
            Op::DeleteMessage("a".into(), 1),
            Op::SetPhase("a".into(), 2, MessagePhase::Published, 5),
        ],
    ];
    for b in &batches {
        s.apply(b, true).unwrap();
        m.apply(b, true).unwrap();
    }
    assert_eq!(bodies_in_file(&s), 1, "one body for three records");
    let loaded = s.load(false).unwrap();
    assert_eq!(loaded, m.load(false).unwrap());
    let a = &loaded.sessions[0].messages[0].1;
    assert_eq!(a.whole_packet(), [vec![3u8; 3], vec![7u8; 1000]].concat());
    assert_eq!(a.phase, MessagePhase::Published);
    // Reopened: the counts are built again from the file; the same key now writes a
    // body of its own.
    s.reopen().unwrap();
    s.apply(&[Op::PutMessage("b".into(), 2, shared(4))], true)
        .unwrap();
    assert_eq!(bodies_in_file(&s), 2);
    s.apply(&[Op::DeleteSession("a".into())], true).unwrap();
    assert_eq!(
        bodies_in_file(&s),
        2,
        "b's first message still needs the first body"
    );
    s.apply(&[Op::DeleteMessage("b".into(), 1)], true).unwrap();
    assert_eq!(bodies_in_file(&s), 1);
    s.apply(&[Op::DeleteSession("b".into())], true).unwrap();
    assert_eq!(bodies_in_file(&s), 0);
    assert!(
        s.index()
            .as_ref()
            .is_some_and(|i| i.bodies.len() == 0 && i.numbers.len() == 0)
    );
}

#[test]
fn matches_the_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(dir.path()).unwrap();
    let mem = MemoryStore::new();
    let batches = vec![
        vec![
            Op::PutSession("a".into(), session(10)),
            Op::PutSession("ab".into(), session(20)),
            Op::PutMessage("a".into(), 1, msg(1)),
            Op::PutMessage("a".into(), 2, msg(2)),
            Op::PutMessage("ab".into(), 1, msg(9)),
            Op::PutAwaiting("a".into(), 7),
            Op::PutRetained("r/1".into(), msg(5)),
        ],
        vec![
            Op::SetPhase("a".into(), 2, MessagePhase::Released, 9),
            Op::SetPhase("a".into(), 99, MessagePhase::Released, 9),
            Op::DeleteMessage("a".into(), 1),
            Op::PutMessage("a".into(), 3, msg(3)),
            Op::PutRetained("r/2".into(), msg(6)),
            Op::DeleteRetained("r/1".into()),
            Op::DeleteSession("ab".into()),
            Op::PutSetting("a".into(), b"1".to_vec()),
            Op::PutSetting("b".into(), b"2".to_vec()),
        ],
        vec![
            Op::PutSetting("a".into(), b"3".to_vec()),
            Op::DeleteSetting("b".into()),
            Op::DeleteSetting("never-set".into()),
        ],
    ];
    for b in &batches {
        redb.apply(b, true).unwrap();
        mem.apply(b, true).unwrap();
    }
    let got = redb.load(false).unwrap();
    assert_eq!(got, mem.load(false).unwrap());
    assert_eq!(got.sessions.len(), 1);
    assert_eq!(
        got.sessions[0]
            .messages
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(got.sessions[0].awaiting, [7]);
    assert_eq!(got.sessions[0].messages[0].1.phase, MessagePhase::Released);
    assert_eq!(got.sessions[0].messages[0].1.packet_id, 9);
    assert_eq!(got.retained.len(), 1);
    assert_eq!(got.settings, [("a".to_string(), b"3".to_vec())]);
}

#[test]
fn survives_reopen_and_refuses_newer_layout() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RedbStore::open(dir.path()).unwrap();
        s.apply(
            &[
                Op::PutSession("c".into(), session(5)),
                Op::PutSetting("doc".into(), b"{}".to_vec()),
            ],
            true,
        )
        .unwrap();
    }
    let s = RedbStore::open(dir.path()).unwrap();
    let loaded = s.load(false).unwrap();
    assert_eq!(loaded.sessions.len(), 1);
    assert_eq!(loaded.settings, [("doc".to_string(), b"{}".to_vec())]);
    {
        let guard = s.lock();
        let txn = guard.as_ref().unwrap().begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("layout", LAYOUT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    drop(s);
    assert!(matches!(
        RedbStore::open(dir.path()),
        Err(StoreError::NewerFormat(_))
    ));
}

#[test]
fn damaged_records_refused_unless_recovering() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    s.apply(&[Op::PutSession("ok".into(), session(5))], true)
        .unwrap();
    {
        let guard = s.lock();
        let txn = guard.as_ref().unwrap().begin_write().unwrap();
        txn.open_table(SESSIONS)
            .unwrap()
            .insert("bad", &[RECORD_FORMAT, 1, 2][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let err = s.load(false).unwrap_err();
    assert!(err.to_string().contains("\"bad\""), "{err}");
    let snap = s.load(true).unwrap();
    assert_eq!(snap.sessions.len(), 1);
    assert_eq!(snap.skipped.len(), 1);
}

/// A store reopened after a failure whose file has gone (an unmounted filesystem) fails
/// rather than starting empty; with the file back, it reopens with what it held.
#[test]
fn reopening_never_creates_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    s.apply(&[Op::PutSession("kept".into(), session(5))], true)
        .unwrap();
    let file = dir.path().join("starling.redb");
    let aside = dir.path().join("aside.redb");
    drop(s.lock().take());
    std::fs::rename(&file, &aside).unwrap();
    assert!(s.reopen().is_err());
    assert!(!file.exists(), "no new file");
    std::fs::rename(&aside, &file).unwrap();
    s.reopen().unwrap();
    assert_eq!(s.load(false).unwrap().sessions.len(), 1);
}

#[test]
fn garbage_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("starling.redb"), vec![0x5A; 8192]).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("starling.redb"), "{err}");
}
