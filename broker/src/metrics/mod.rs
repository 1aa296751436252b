//! Prometheus metrics: counters and histograms kept in atomics, rendered
//! in the text exposition format on the HTTP port's `/metrics`.
//!
//! The hot path only adds to atomics: every label set is resolved to an
//! array slot (environments are fixed at start, reasons, methods and codes
//! are fixed lists), so a request takes no lock and allocates nothing, and
//! no caller-supplied text ever becomes a label value (bounded
//! cardinality). Gauges that describe state (identities, revocations, key
//! lifetimes, the audit queue) are read when scraped ([`render`]).

mod histogram;
pub mod render;
pub mod rpc;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

pub use histogram::Histogram;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Credential kinds (`kind` label of `credbroker_credentials_issued_total`).
pub const KINDS: [&str; 2] = ["jwt", "x509"];

/// Denial reason classes (`reason` label): the gRPC status of the refusal.
pub const REASONS: [&str; 9] = [
    "invalid_argument",
    "unauthenticated",
    "permission_denied",
    "not_found",
    "already_exists",
    "failed_precondition",
    "unavailable",
    "resource_exhausted",
    "other",
];

/// Attestation methods (`method` label of `credbroker_attestations_total`).
pub const ATTEST_METHODS: [&str; 5] = ["join_token", "kubernetes", "oidc", "aws_iid", "none"];

/// The `env` label of events that concern no served environment (a
/// refusal before the caller's environment is known).
pub const NO_ENV: &str = "none";

/// Every metric the broker updates as it works.
#[derive(Debug)]
pub struct Metrics {
    /// Served environments; slot `envs.len()` is [`NO_ENV`].
    envs: Vec<String>,
    issued: Vec<[Counter; KINDS.len()]>,
    denied: Vec<[Counter; REASONS.len()]>,
    attestations: [[Counter; 2]; ATTEST_METHODS.len()],
    /// RPC latency, by [`rpc::METHODS`] slot and gRPC code.
    pub(crate) rpc: Vec<[Histogram; rpc::CODES.len()]>,
    /// How long issuing requests wait for their audit records to commit.
    pub audit_commit: Histogram,
    /// Time of one audit batch transaction in the store.
    pub store_audit_append: Histogram,
    revocation_subscribers: AtomicI64,
    /// 1 while this broker leads the brokers sharing its store.
    leader: AtomicI64,
    /// Changes other brokers made, applied from the change feed.
    pub changes_applied: Counter,
    anomalies: [Counter; crate::anomaly::Kind::ALL.len()],
}

impl Metrics {
    /// Metrics for a broker serving `envs`.
    pub fn new<S: AsRef<str>>(envs: &[S]) -> Self {
        let envs: Vec<String> = envs.iter().map(|e| e.as_ref().to_owned()).collect();
        let slots = envs.len() + 1;
        Self {
            issued: (0..slots).map(|_| Default::default()).collect(),
            denied: (0..slots).map(|_| Default::default()).collect(),
            envs,
            attestations: Default::default(),
            rpc: (0..rpc::METHODS.len() + 1)
                .map(|_| std::array::from_fn(|_| Histogram::default()))
                .collect(),
            audit_commit: Histogram::default(),
            store_audit_append: Histogram::default(),
            revocation_subscribers: AtomicI64::new(0),
            leader: AtomicI64::new(0),
            changes_applied: Counter::default(),
            anomalies: Default::default(),
        }
    }

    /// Records whether this broker leads.
    pub fn set_leader(&self, leads: bool) {
        self.leader.store(i64::from(leads), Ordering::Relaxed);
    }

    fn env_slot(&self, env: Option<&str>) -> usize {
        env.and_then(|env| self.envs.iter().position(|e| e == env))
            .unwrap_or(self.envs.len())
    }

    fn env_label(&self, slot: usize) -> &str {
        self.envs.get(slot).map_or(NO_ENV, String::as_str)
    }

    /// Where a credential of `kind` (`jwt-svid`/`x509-svid`) issued in
    /// `env` is counted; resolved before the audit commit, counted after.
    pub fn issued_slot(&self, env: Option<&str>, kind: Option<&str>) -> IssuedSlot {
        let kind = usize::from(kind.is_some_and(|k| k.starts_with("x509")));
        IssuedSlot(self.env_slot(env), kind)
    }

    /// `n` credentials were handed out.
    pub fn issued(&self, slot: IssuedSlot, n: u64) {
        self.issued[slot.0][slot.1].add(n);
    }

    /// A request was refused; `reason` is the audit reason
    /// (`permission_denied: …`), of which only the class is kept.
    pub fn denied(&self, env: Option<&str>, reason: &str) {
        self.denied[self.env_slot(env)][reason_class(reason)].inc();
    }

    /// An anomaly of `kind` was found.
    pub fn anomaly(&self, kind: crate::anomaly::Kind) {
        if let Some(i) = crate::anomaly::Kind::ALL.iter().position(|k| *k == kind) {
            self.anomalies[i].inc();
        }
    }

    /// An Attest call with `method` evidence ended, successfully or not.
    pub fn attested(&self, method: &str, success: bool) {
        let m = ATTEST_METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(ATTEST_METHODS.len() - 1);
        self.attestations[m][usize::from(!success)].inc();
    }

    /// One more revocation subscriber until the guard is dropped.
    pub fn revocation_subscriber(self: &std::sync::Arc<Self>) -> SubscriberGuard {
        self.revocation_subscribers.fetch_add(1, Ordering::Relaxed);
        SubscriberGuard(std::sync::Arc::clone(self))
    }

    /// Records one RPC of `method` slot that ended with gRPC `code`.
    pub(crate) fn rpc_done(&self, method: usize, code: usize, took: Duration) {
        if let Some(h) = self
            .rpc
            .get(method)
            .and_then(|m| m.get(code.min(rpc::CODES.len() - 1)))
        {
            h.observe(took);
        }
    }
}

/// An environment and credential kind of `credbroker_credentials_issued_total`.
#[derive(Debug, Clone, Copy)]
pub struct IssuedSlot(usize, usize);

impl IssuedSlot {
    /// Whether it counts X.509-SVIDs (else JWT-SVIDs).
    pub fn is_x509(&self) -> bool {
        self.1 == 1
    }
}

/// Counts an open `WatchRevocations` stream while it lives.
#[derive(Debug)]
pub struct SubscriberGuard(std::sync::Arc<Metrics>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0
            .revocation_subscribers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The class of an audit reason (`code: message`): one of [`REASONS`].
fn reason_class(reason: &str) -> usize {
    let class = reason.split(':').next().unwrap_or_default();
    REASONS
        .iter()
        .position(|r| *r == class)
        .unwrap_or(REASONS.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_classes_never_free_text() {
        let m = Metrics::new(&["dev"]);
        m.denied(Some("dev"), "permission_denied: identity dev/x is disabled");
        m.denied(Some("prod-typo"), "whatever the caller wrote");
        assert_eq!(m.denied[0][2].get(), 1);
        assert_eq!(
            m.denied[1][REASONS.len() - 1].get(),
            1,
            "unknown env and reason fold into none/other"
        );
        m.issued(m.issued_slot(Some("dev"), Some("x509-svid")), 1);
        m.issued(m.issued_slot(Some("dev"), Some("jwt-svid")), 2);
        assert_eq!((m.issued[0][0].get(), m.issued[0][1].get()), (2, 1));
    }
}
