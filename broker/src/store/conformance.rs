//! The store conformance suite: what every backend must do, run against
//! each of them (`conformance_suite!` in each backend's tests).
//!
//! Each test gets a fresh, empty database ([`TestDb`]) and may open a
//! second handle on it ([`TestDb::open_again`]), which stands for a second
//! broker sharing the store.

use std::sync::Arc;

use super::{
    ChangeKind, JoinTokenRecord, NewRevocation, OperatorRecord, Store, StoreError, UsageUpdate,
};
use crate::audit::{AuditEntry, ChainKey, ChainVerifier, GENESIS};
use crate::model::test_identity;
use crate::policy::roles::Role;
use crate::revocation::Target;

/// A fresh database for one test; dropped with the test.
pub(crate) struct TestDb {
    /// The store URL.
    pub url: String,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Removes the database when dropped.
    pub _cleanup: Box<dyn std::any::Any + Send>,
}

impl TestDb {
    /// A second handle on the same database (a second broker).
    pub async fn open_again(&self) -> Arc<dyn Store> {
        super::open(&self.url).await.unwrap()
    }
}

/// Runs every conformance test against the backend `$fresh` makes.
macro_rules! conformance_suite {
    ($fresh:path) => {
        $crate::store::conformance::conformance_suite!(@tests $fresh;
            identities_round_trip_and_conflict,
            a_usage_batch_lands_row_by_row_and_zero_stays_never,
            outstanding_credentials_of_one_identity_are_its_own_unexpired_ones,
            an_identitys_history_is_whole_across_brokers_and_restarts,
            join_tokens_are_consumed_once_and_purged_after_expiry,
            a_join_token_use_is_spent_once_across_brokers,
            operators_round_trip_and_revoke_once,
            audit_appends_chain_after_whatever_was_committed,
            concurrent_appenders_form_one_chain,
            revocations_are_numbered_in_order_and_the_number_survives_purge,
            every_cached_write_is_a_change,
            jtis_and_instances_are_spent_once,
            audit_cuts_only_move_forward_and_the_chain_continues_from_them,
        );
    };
    (@tests $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let db = $fresh().await;
                $crate::store::conformance::$name(&db).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

pub(crate) async fn identities_round_trip_and_conflict(db: &TestDb) {
    let store = &db.store;
    let mut id = test_identity();
    store.insert_identity(&id).await.unwrap();
    assert!(matches!(
        store.insert_identity(&id).await,
        Err(StoreError::AlreadyExists(_))
    ));
    id.enabled = false;
    store.update_identity(&id).await.unwrap();
    store
        .record_usage(&[UsageUpdate {
            identity: id.key.clone(),
            last_issued_at: Some(50),
            last_seen_at: Some(60),
        }])
        .await
        .unwrap();
    // Usage never moves backwards.
    store
        .record_usage(&[UsageUpdate {
            identity: id.key.clone(),
            last_issued_at: Some(10),
            last_seen_at: None,
        }])
        .await
        .unwrap();
    id.last_issued_at = Some(50);
    id.last_seen_at = Some(60);
    assert_eq!(store.list_identities().await.unwrap(), vec![id.clone()]);
    assert_eq!(store.get_identity(&id.key).await.unwrap(), Some(id.clone()));
    let mut missing = id.clone();
    missing.key.name = crate::model::IdentityName::new("missing").unwrap();
    assert_eq!(store.get_identity(&missing.key).await.unwrap(), None);
    assert!(matches!(
        store.update_identity(&missing).await,
        Err(StoreError::NotFound(_))
    ));
}

/// A flush of 300 identities (several multi-row statements on SQLite,
/// one on PostgreSQL): each row gets its own times, a time never moves
/// back, and "never" (None or 0) stays NULL.
pub(crate) async fn a_usage_batch_lands_row_by_row_and_zero_stays_never(db: &TestDb) {
    let store = &db.store;
    let mut ids = Vec::new();
    for i in 0..300i64 {
        let mut id = test_identity();
        id.key.name = crate::model::IdentityName::new(&format!("svc-{i:03}")).unwrap();
        id.spiffe_id =
            crate::model::SpiffeId::new(id.spiffe_id.trust_domain().clone(), id.key.name.clone());
        store.insert_identity(&id).await.unwrap();
        ids.push(id);
    }
    let first: Vec<UsageUpdate> = ids
        .iter()
        .zip(0i64..)
        .map(|(id, i)| UsageUpdate {
            identity: id.key.clone(),
            last_issued_at: (i % 3 != 0).then_some(1_000 + i),
            last_seen_at: Some(if i % 5 == 0 { 0 } else { 2_000 + i }),
        })
        .collect();
    store.record_usage(&first).await.unwrap();
    // Older times for every other identity: nothing moves back.
    let older: Vec<UsageUpdate> = ids
        .iter()
        .step_by(2)
        .map(|id| UsageUpdate {
            identity: id.key.clone(),
            last_issued_at: Some(1),
            last_seen_at: Some(1),
        })
        .collect();
    store.record_usage(&older).await.unwrap();
    let stored = store.list_identities().await.unwrap();
    assert_eq!(stored.len(), 300);
    for (id, i) in stored.iter().zip(0i64..) {
        assert_eq!(id.key, ids[i as usize].key);
        let issued = if i % 3 != 0 {
            Some(1_000 + i)
        } else if i % 2 == 0 {
            Some(1)
        } else {
            None
        };
        let seen = if i % 5 != 0 {
            Some(2_000 + i)
        } else if i % 2 == 0 {
            Some(1)
        } else {
            None
        };
        assert_eq!(
            (id.last_issued_at, id.last_seen_at),
            (issued, seen),
            "{}",
            id.key
        );
    }
}

fn token(id: &crate::model::Identity, uses_left: u32) -> JoinTokenRecord {
    JoinTokenRecord {
        hash: [7; 32],
        identity: id.key.clone(),
        created_at: 100,
        expires_at: 200,
        uses_left,
    }
}

pub(crate) async fn join_tokens_are_consumed_once_and_purged_after_expiry(db: &TestDb) {
    let store = &db.store;
    let id = test_identity();
    store.insert_identity(&id).await.unwrap();
    store.insert_join_token(&token(&id, 1)).await.unwrap();
    assert_eq!(
        store.find_join_token(&[7; 32]).await.unwrap(),
        Some(token(&id, 1))
    );
    assert!(
        !store.consume_join_token(&[7; 32], 200).await.unwrap(),
        "expired"
    );
    assert!(store.consume_join_token(&[7; 32], 150).await.unwrap());
    assert!(
        !store.consume_join_token(&[7; 32], 150).await.unwrap(),
        "spent"
    );
    assert_eq!(store.purge_join_tokens(200).await.unwrap(), 0);
    assert_eq!(store.purge_join_tokens(201).await.unwrap(), 1);
    assert_eq!(store.find_join_token(&[7; 32]).await.unwrap(), None);
}

pub(crate) async fn a_join_token_use_is_spent_once_across_brokers(db: &TestDb) {
    let id = test_identity();
    db.store.insert_identity(&id).await.unwrap();
    db.store.insert_join_token(&token(&id, 3)).await.unwrap();
    let other = db.open_again().await;
    // 3 uses, 20 concurrent spenders on two handles: exactly 3 win.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 {
            Arc::clone(&db.store)
        } else {
            Arc::clone(&other)
        };
        tasks.push(tokio::spawn(async move {
            store.consume_join_token(&[7; 32], 150).await.unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 3);
}

pub(crate) async fn operators_round_trip_and_revoke_once(db: &TestDb) {
    let store = &db.store;
    let op = OperatorRecord {
        serial: "4A".into(),
        name: "alice".into(),
        role: Role::Auditor,
        created_at: 10,
        expires_at: 100,
        created_by: "admin".into(),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    };
    store.insert_operator(&op).await.unwrap();
    assert!(matches!(
        store.insert_operator(&op).await,
        Err(StoreError::AlreadyExists(_))
    ));
    store
        .revoke_operator("4A", 20, "bob", "left")
        .await
        .unwrap();
    assert!(matches!(
        store.revoke_operator("4A", 30, "bob", "again").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.list_operators().await.unwrap(),
        vec![OperatorRecord {
            revoked_at: Some(20),
            revoked_by: Some("bob".into()),
            revoke_reason: Some("left".into()),
            ..op
        }]
    );
}

fn entry(n: i64) -> AuditEntry {
    AuditEntry {
        at_ms: n,
        action: "fetch_jwt".into(),
        decision: "issued".into(),
        identity: Some("dev/api".into()),
        env: Some("dev".into()),
        credential: Some("jwt-svid".into()),
        jti: Some(format!("jti-{n}")),
        expires_at: Some(1_000 + n),
        ..AuditEntry::default()
    }
}

/// Walks the whole stored chain; returns how many entries verified.
async fn verify_chain(store: &dyn Store, key: &ChainKey) -> i64 {
    let mut verifier = ChainVerifier::new(key.clone());
    let mut after = 0;
    loop {
        let page = store.audit_page(after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        verifier.feed(&page);
    }
    let report = verifier.finish();
    assert_eq!(report.broken, None, "the chain is broken");
    report.entries
}

/// What `GetIdentity` counts: one identity's issued credentials that have
/// not expired, and nobody else's; without an identity, everyone's.
pub(crate) async fn outstanding_credentials_of_one_identity_are_its_own_unexpired_ones(
    db: &TestDb,
) {
    let key = ChainKey::for_tests();
    let of = |identity: &str, n: i64| AuditEntry {
        identity: Some(identity.into()),
        ..entry(n)
    };
    // expires_at is 1,000 + n: at 1,002, entries 3 and up are unexpired.
    let entries = [
        of("dev/api", 1),
        of("dev/api", 3),
        of("dev/api", 4),
        of("dev/web", 5),
        of("dev/web", 6),
    ];
    db.store.append_audit(&entries, &key).await.unwrap();
    let jtis = |found: Vec<super::OutstandingCredential>| {
        let mut jtis: Vec<String> = found.into_iter().filter_map(|c| c.jti).collect();
        jtis.sort();
        jtis
    };
    let api = db
        .store
        .outstanding_credentials(1_002, Some("dev/api"))
        .await;
    assert_eq!(jtis(api.unwrap()), ["jti-3", "jti-4"]);
    let web = db
        .store
        .outstanding_credentials(1_002, Some("dev/web"))
        .await;
    assert_eq!(jtis(web.unwrap()), ["jti-5", "jti-6"]);
    let none = db
        .store
        .outstanding_credentials(1_002, Some("dev/gone"))
        .await;
    assert!(none.unwrap().is_empty());
    let all = db.store.outstanding_credentials(1_002, None).await;
    assert_eq!(jtis(all.unwrap()), ["jti-3", "jti-4", "jti-5", "jti-6"]);
}

/// One identity's history: newest first, nobody else's, whichever broker
/// appended each entry and whichever reads it, after a restart too.
pub(crate) async fn an_identitys_history_is_whole_across_brokers_and_restarts(db: &TestDb) {
    use super::{CertKey, CertQuery};
    use crate::audit::AuditFilter;
    let key = ChainKey::for_tests();
    let of = |identity: &str, n: i64| AuditEntry {
        identity: Some(identity.into()),
        ..entry(n)
    };
    let cert = |identity: &str, n: i64| AuditEntry {
        credential: Some("x509-svid".into()),
        jti: None,
        serial: Some(format!("5E{n:02}")),
        ..of(identity, n)
    };
    let first = &db.store;
    first
        .append_audit(
            &[of("dev/api", 1), of("dev/web", 2), of("dev/api", 3)],
            &key,
        )
        .await
        .unwrap();
    let second = db.open_again().await;
    second
        .append_audit(&[of("dev/web", 4), cert("dev/api", 5)], &key)
        .await
        .unwrap();
    // The first broker's next entry for dev/api follows the second's.
    first
        .append_audit(
            &[of("dev/api", 6), of("dev/api", 7), of("dev/web", 8)],
            &key,
        )
        .await
        .unwrap();
    let restarted = db.open_again().await;
    for store in [first, &second, &restarted] {
        let history = |identity: &str, limit: i64, since_ms: Option<i64>, until_ms| {
            let filter = AuditFilter {
                identity: Some(identity.into()),
                since_ms,
                until_ms,
                limit,
                ..Default::default()
            };
            async move {
                let found = store.query_audit(&filter).await.unwrap();
                found.iter().map(|e| e.entry.at_ms).collect::<Vec<_>>()
            }
        };
        assert_eq!(history("dev/api", 10, None, None).await, [7, 6, 5, 3, 1]);
        assert_eq!(history("dev/web", 10, None, None).await, [8, 4, 2]);
        assert_eq!(history("dev/api", 2, None, None).await, [7, 6]);
        assert_eq!(history("dev/api", 10, Some(3), Some(7)).await, [6, 5, 3]);
        assert_eq!(history("dev/api", 1, Some(2), Some(4)).await, [3]);
        assert!(history("dev/gone", 10, None, None).await.is_empty());
        let outstanding = store
            .outstanding_credentials(1_000, Some("dev/api"))
            .await
            .unwrap();
        assert!(outstanding.iter().all(|c| c.identity == "dev/api"));
        let mut ids: Vec<String> = outstanding
            .into_iter()
            .filter_map(|c| c.jti.or(c.serial))
            .collect();
        ids.sort();
        assert_eq!(ids, ["5E05", "jti-1", "jti-3", "jti-6", "jti-7"]);
        let certs = store
            .issued_certificates(
                &CertQuery {
                    by: CertKey::Identity,
                    value: "dev/api",
                    until: 1_000,
                },
                1_000,
            )
            .await
            .unwrap();
        assert_eq!(
            certs.iter().map(|c| c.serial.as_str()).collect::<Vec<_>>(),
            ["5E05"],
            "the certificate the other broker issued"
        );
    }
}

pub(crate) async fn audit_appends_chain_after_whatever_was_committed(db: &TestDb) {
    let key = ChainKey::for_tests();
    let store = &db.store;
    assert_eq!(store.audit_head().await.unwrap(), None);
    let (seq, head) = store
        .append_audit(&[entry(1), entry(2)], &key)
        .await
        .unwrap();
    assert_eq!(seq, 2);
    assert_eq!(store.audit_head().await.unwrap(), Some((2, head)));
    // A second broker appends after the first one's entries, not after
    // what it saw when it started.
    let other = db.open_again().await;
    let (seq, _) = other.append_audit(&[entry(3)], &key).await.unwrap();
    assert_eq!(seq, 3);
    let (seq, _) = store.append_audit(&[entry(4)], &key).await.unwrap();
    assert_eq!(seq, 4);
    let page = store.audit_page(0, 10).await.unwrap();
    assert_eq!(page[0].prev_hash, GENESIS);
    assert_eq!(
        page.iter().map(|e| e.entry.at_ms).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(verify_chain(store.as_ref(), &key).await, 4);
    let found = store
        .query_audit(&crate::audit::AuditFilter {
            jti: Some("jti-3".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "who used jti-3 answers for either broker");
}

pub(crate) async fn concurrent_appenders_form_one_chain(db: &TestDb) {
    let key = ChainKey::for_tests();
    let other = db.open_again().await;
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        let store = if i % 2 == 0 {
            Arc::clone(&db.store)
        } else {
            Arc::clone(&other)
        };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let batch: Vec<_> = (0..5).map(|j| entry(i * 10 + j)).collect();
            store.append_audit(&batch, &key).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(verify_chain(db.store.as_ref(), &key).await, 200);
}

fn revocation(jti: &str, covers_until: i64) -> NewRevocation {
    NewRevocation {
        target: Target::Jti(jti.into()),
        reason: "test".into(),
        operator: "admin".into(),
        revoked_at: 10,
        covers_until,
        identities: vec![],
    }
}

pub(crate) async fn revocations_are_numbered_in_order_and_the_number_survives_purge(db: &TestDb) {
    let store = &db.store;
    assert_eq!(store.latest_revocation_seq().await.unwrap(), 0);
    let a = store
        .insert_revocation(&revocation("a", 100))
        .await
        .unwrap();
    let b = store
        .insert_revocation(&revocation("b", 300))
        .await
        .unwrap();
    assert!(b > a);
    let after_a = store.revocations_after(a).await.unwrap();
    assert_eq!(after_a.len(), 1);
    assert_eq!(after_a[0].target, Target::Jti("b".into()));
    assert_eq!(store.live_revocations(200).await.unwrap().len(), 1);
    assert_eq!(store.purge_revocations(200).await.unwrap(), 1);
    assert_eq!(store.latest_revocation_seq().await.unwrap(), b);
    assert_eq!(store.purge_revocations(400).await.unwrap(), 1);
    assert_eq!(
        store.latest_revocation_seq().await.unwrap(),
        b,
        "the stream's end is remembered after every row is purged"
    );
}

pub(crate) async fn every_cached_write_is_a_change(db: &TestDb) {
    let store = &db.store;
    let start = store.latest_change().await.unwrap();
    let mut id = test_identity();
    store.insert_identity(&id).await.unwrap();
    id.enabled = false;
    store.update_identity(&id).await.unwrap();
    let seq = store
        .insert_revocation(&revocation("a", 100))
        .await
        .unwrap();
    let op = OperatorRecord {
        serial: "4B".into(),
        name: "bob".into(),
        role: Role::Operator,
        created_at: 10,
        expires_at: 100,
        created_by: "admin".into(),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    };
    store.insert_operator(&op).await.unwrap();
    store.revoke_operator("4B", 20, "admin", "x").await.unwrap();
    // A failed write records nothing.
    assert!(store.insert_identity(&id).await.is_err());
    // Usage and audit are not cached elsewhere: no change.
    store
        .record_usage(&[UsageUpdate {
            identity: id.key.clone(),
            last_issued_at: Some(5),
            last_seen_at: None,
        }])
        .await
        .unwrap();
    let other = db.open_again().await;
    let changes = other.changes_after(start, 100).await.unwrap();
    let seen: Vec<_> = changes.iter().map(|c| (c.kind, c.key.clone())).collect();
    assert_eq!(
        seen,
        [
            (ChangeKind::Identity, id.key.to_string()),
            (ChangeKind::Identity, id.key.to_string()),
            (ChangeKind::Revocation, seq.to_string()),
            (ChangeKind::Operator, "4B".to_owned()),
            (ChangeKind::Operator, "4B".to_owned()),
        ]
    );
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(other.latest_change().await.unwrap(), changes[4].seq);
    assert_eq!(
        other.changes_after(changes[1].seq, 2).await.unwrap(),
        changes[2..4]
    );
    assert_eq!(other.purge_changes(0).await.unwrap(), 0);
    assert_eq!(other.purge_changes(i64::MAX).await.unwrap(), 5);
}

pub(crate) async fn jtis_and_instances_are_spent_once(db: &TestDb) {
    let store = &db.store;
    assert!(store.spend_jti("oidc", "j1", 200, 100).await.unwrap());
    assert!(!store.spend_jti("oidc", "j1", 200, 150).await.unwrap());
    assert!(store.jti_spent("oidc", "j1", 150).await.unwrap());
    assert!(!store.jti_spent("oidc", "j1", 200).await.unwrap());
    // Expired: may be spent again (its token can no longer be presented).
    assert!(store.spend_jti("oidc", "j1", 400, 250).await.unwrap());
    assert_eq!(store.purge_jtis(500).await.unwrap(), 1);
    assert_eq!(store.instance_key("aws", "i-1").await.unwrap(), None);
    assert_eq!(
        store.bind_instance("aws", "i-1", "k1", 1).await.unwrap(),
        "k1"
    );
    assert_eq!(
        store.bind_instance("aws", "i-1", "k2", 2).await.unwrap(),
        "k1",
        "the first key stays"
    );
    assert_eq!(
        store.instance_key("aws", "i-1").await.unwrap().as_deref(),
        Some("k1")
    );
}

pub(crate) async fn audit_cuts_only_move_forward_and_the_chain_continues_from_them(db: &TestDb) {
    use crate::audit::checkpoint::{Checkpoint, CheckpointKind};
    let store = &db.store;
    let key = ChainKey::for_tests();
    assert!(store.audit_cut().await.unwrap().is_none());
    let batch: Vec<AuditEntry> = (1..=30).map(entry).collect();
    store.append_audit(&batch, &key).await.unwrap();
    let page = store.audit_page(0, 100).await.unwrap();
    let cut = |seq: i64| super::AuditCut {
        checkpoint: Checkpoint {
            kind: CheckpointKind::Cut,
            seq,
            head: page[seq as usize - 1].hash,
            at_ms: seq,
            signature: vec![1, 2, 3],
        },
        export: format!("audit-{seq}.jsonl"),
    };
    store.record_audit_cut(&cut(20)).await.unwrap();
    store.record_audit_cut(&cut(10)).await.unwrap();
    assert_eq!(
        store.audit_cut().await.unwrap(),
        Some(cut(20)),
        "an older cut changes nothing"
    );
    assert_eq!(store.delete_audit_through(20, 15).await.unwrap(), 15);
    assert_eq!(store.audit_page(0, 100).await.unwrap()[0].seq, 16);
    assert_eq!(store.delete_audit_through(20, 15).await.unwrap(), 5);
    assert_eq!(store.delete_audit_through(20, 15).await.unwrap(), 0);
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, 30);
    // Everything exported and deleted: the next entry links to the cut,
    // not to the genesis.
    store.record_audit_cut(&cut(30)).await.unwrap();
    assert_eq!(store.delete_audit_through(30, 100).await.unwrap(), 10);
    let (seq, _) = store.append_audit(&[entry(31)], &key).await.unwrap();
    assert_eq!(seq, 31);
    let next = store.audit_page(0, 10).await.unwrap();
    assert_eq!(next[0].prev_hash, page[29].hash);
    assert!(next[0].is_intact(&key));
}
