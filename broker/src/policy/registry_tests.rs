//! The registry's indexes against the real store: what a node's snapshot
//! and a platform attestation see after identities are created, loaded
//! from the store, changed by another broker, and removed.

use std::sync::Arc;

use super::IdentityRegistry;
use crate::model::{
    EnvName, Identity, IdentityKey, Selector, SpiffeId, test_identity, test_selector,
};
use crate::store::{SqliteStore, Store};

fn key(s: &str) -> IdentityKey {
    IdentityKey::parse(s).unwrap()
}

fn identity(name: &str, selectors: Vec<Selector>, parent: Option<&str>) -> Identity {
    let mut id = test_identity();
    id.key = key(name);
    id.spiffe_id = SpiffeId::new(id.spiffe_id.trust_domain().clone(), id.key.name.clone());
    id.selectors = selectors;
    id.parent = parent.map(key);
    id
}

fn names(ids: &[Arc<Identity>]) -> Vec<String> {
    ids.iter().map(|i| i.key.to_string()).collect()
}

async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    (dir, store)
}

#[tokio::test]
async fn a_nodes_children_are_exactly_its_own_after_create_load_move_and_delete() {
    let (_dir, store) = store().await;
    let registry = IdentityRegistry::load(Arc::clone(&store)).await.unwrap();
    for node in ["dev/node-a", "dev/node-b"] {
        registry.create(identity(node, vec![], None)).await.unwrap();
    }
    for (i, node) in ["dev/node-a", "dev/node-a", "dev/node-b"]
        .iter()
        .enumerate()
    {
        let uid = i.to_string();
        registry
            .create(identity(
                &format!("dev/w{i}"),
                vec![test_selector("unix:uid", &uid)],
                Some(node),
            ))
            .await
            .unwrap();
    }
    assert_eq!(
        names(&registry.children(&key("dev/node-a"))),
        ["dev/w0", "dev/w1"]
    );
    assert_eq!(names(&registry.children(&key("dev/node-b"))), ["dev/w2"]);

    // Loaded from the store, as after a restart.
    let loaded = IdentityRegistry::load(Arc::clone(&store)).await.unwrap();
    assert_eq!(
        names(&loaded.children(&key("dev/node-a"))),
        ["dev/w0", "dev/w1"]
    );

    // Another broker sharing the store moved w1 to node-b, then deleted w0.
    let moved = identity(
        "dev/w1",
        vec![test_selector("unix:uid", "1")],
        Some("dev/node-b"),
    );
    loaded.apply_stored(&key("dev/w1"), Some(moved)).await;
    assert_eq!(names(&loaded.children(&key("dev/node-a"))), ["dev/w0"]);
    assert_eq!(
        names(&loaded.children(&key("dev/node-b"))),
        ["dev/w1", "dev/w2"]
    );
    loaded.apply_stored(&key("dev/w0"), None).await;
    assert!(loaded.children(&key("dev/node-a")).is_empty());
}

#[tokio::test]
async fn platform_candidates_hold_every_match_and_no_served_workload() {
    let (_dir, store) = store().await;
    let registry = IdentityRegistry::load(Arc::clone(&store)).await.unwrap();
    registry
        .create(identity(
            "dev/api",
            vec![
                test_selector("k8s:ns", "pay"),
                test_selector("k8s:sa", "api"),
            ],
            None,
        ))
        .await
        .unwrap();
    registry
        .create(identity(
            "dev/web",
            vec![test_selector("k8s:ns", "web")],
            None,
        ))
        .await
        .unwrap();
    registry
        .create(identity("dev/node", vec![], None))
        .await
        .unwrap();
    registry
        .create(identity(
            "dev/w",
            vec![test_selector("unix:uid", "7")],
            Some("dev/node"),
        ))
        .await
        .unwrap();
    let env = EnvName::new("dev").unwrap();
    let proven = [
        test_selector("k8s:ns", "pay"),
        test_selector("k8s:sa", "api"),
        test_selector("unix:uid", "7"),
    ];
    assert_eq!(
        names(&registry.platform_candidates(&env, &proven)),
        ["dev/api"]
    );
    let loaded = IdentityRegistry::load(store).await.unwrap();
    assert_eq!(
        names(&loaded.platform_candidates(&env, &proven)),
        ["dev/api"]
    );
    assert_eq!(
        names(&loaded.platform_candidates(&env, &[test_selector("k8s:ns", "web")])),
        ["dev/web"]
    );
    let prod = EnvName::new("prod").unwrap();
    assert!(loaded.platform_candidates(&prod, &proven).is_empty());
}

/// Usage times as the store has them (what a restarted broker reads).
async fn stored_times(store: &Arc<dyn Store>, name: &str) -> (Option<i64>, Option<i64>) {
    let id = store.get_identity(&key(name)).await.unwrap().unwrap();
    (id.last_issued_at, id.last_seen_at)
}

#[tokio::test]
async fn usage_reaches_the_store_once_per_interval_and_all_of_it_at_shutdown() {
    use super::usage::WRITE_EVERY;
    let (_dir, store) = store().await;
    let registry = IdentityRegistry::load(Arc::clone(&store)).await.unwrap();
    for name in ["dev/a", "dev/b", "dev/c"] {
        registry.create(identity(name, vec![], None)).await.unwrap();
    }
    let t0 = crate::model::unix_now();
    // Used within an interval of their creation: counted, not written.
    registry.record_issued(&key("dev/a"), t0 + 1);
    registry.record_seen(&key("dev/b"), t0 + 2);
    assert_eq!(registry.flush_usage(t0 + 3).await.unwrap(), 0);
    assert_eq!(stored_times(&store, "dev/a").await, (None, None));
    let shown = registry.view(&key("dev/a"), t0 + 3).unwrap().identity;
    assert_eq!(shown.last_issued_at, Some(t0 + 1), "operators see memory");

    // An interval later, a use writes that identity at once, and the
    // sweep finds dev/b, used once and idle since; dev/c was never used.
    let t1 = t0 + WRITE_EVERY + 5;
    registry.record_issued(&key("dev/a"), t1);
    assert_eq!(registry.flush_usage(t1).await.unwrap(), 2);
    assert_eq!(stored_times(&store, "dev/a").await, (Some(t1), Some(t1)));
    assert_eq!(stored_times(&store, "dev/b").await, (None, Some(t0 + 2)));
    assert_eq!(stored_times(&store, "dev/c").await, (None, None));
    assert_eq!(
        registry.flush_usage(t1 + 1).await.unwrap(),
        0,
        "nothing new"
    );
    // Used again at once: counted, not written for another interval.
    registry.record_seen(&key("dev/a"), t1 + 2);
    assert_eq!(registry.flush_usage(t1 + 3).await.unwrap(), 0);
    assert_eq!(stored_times(&store, "dev/a").await, (Some(t1), Some(t1)));

    // A graceful stop writes whatever is left, due or not.
    assert_eq!(registry.flush_all_usage(t1 + 5).await.unwrap(), 1);
    assert_eq!(
        stored_times(&store, "dev/a").await,
        (Some(t1), Some(t1 + 2))
    );
    assert_eq!(registry.flush_all_usage(t1 + 6).await.unwrap(), 0);
}
