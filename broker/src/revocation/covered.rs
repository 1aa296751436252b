//! The certificates each live revocation covers, looked up in the audit
//! log once per revocation (by an index: serial, identity, environment)
//! and kept as a small set, so a CRL is built from them without reading
//! the log again. Revocations name targets, not serials; a CRL needs
//! serials.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::crl::RevokedCert;
use super::{Revocation, Target};
use crate::store::{CertKey, CertQuery, Store, StoreError};

/// One covered certificate.
#[derive(Debug, Clone)]
struct Covered {
    /// Upper-case hex serial.
    serial: Box<str>,
    /// The environment of the identity it was issued to (shared).
    env: Arc<str>,
    expires_at: i64,
}

/// Covered certificates per revocation (by its sequence number).
#[derive(Debug, Default)]
pub struct CoveredCerts {
    by_rev: Mutex<HashMap<i64, Arc<Vec<Covered>>>>,
}

impl CoveredCerts {
    /// The unexpired certificates of `env` that `live` revocations cover,
    /// sorted by serial, each with the earliest time it was revoked.
    /// Revocations not seen before are looked up in `store` now; those no
    /// longer live are forgotten.
    pub async fn revoked_in(
        &self,
        store: &dyn Store,
        live: &[Arc<Revocation>],
        env: &str,
        now: i64,
    ) -> Result<Vec<RevokedCert>, StoreError> {
        let known: HashSet<i64> = self.lock().keys().copied().collect();
        for rev in live.iter().filter(|r| !known.contains(&r.seq)) {
            let certs = Arc::new(lookup(store, rev, now).await?);
            self.lock().insert(rev.seq, certs);
        }
        let live_seqs: HashSet<i64> = live.iter().map(|r| r.seq).collect();
        let memo = {
            let mut by_rev = self.lock();
            by_rev.retain(|seq, _| live_seqs.contains(seq));
            by_rev.clone()
        };
        let mut out: Vec<RevokedCert> = Vec::new();
        for rev in live {
            let Some(certs) = memo.get(&rev.seq) else {
                continue;
            };
            out.extend(
                certs
                    .iter()
                    .filter(|c| &*c.env == env && c.expires_at > now)
                    .map(|c| RevokedCert {
                        serial: c.serial.clone(),
                        revoked_at: rev.revoked_at,
                    }),
            );
        }
        // A certificate several revocations cover is listed once, revoked
        // at the first of them.
        out.sort_unstable_by(|a, b| (&a.serial, a.revoked_at).cmp(&(&b.serial, b.revoked_at)));
        out.dedup_by(|later, first| later.serial == first.serial);
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Vec<Covered>>>> {
        self.by_rev.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The certificates `rev` covers, unexpired at `now`.
async fn lookup(store: &dyn Store, rev: &Revocation, now: i64) -> Result<Vec<Covered>, StoreError> {
    let until = rev.revoked_at;
    let mut queries: Vec<(CertKey, String, i64)> = Vec::new();
    match &rev.target {
        // A JWT is not a certificate.
        Target::Jti(_) => {}
        // One certificate, whenever it was issued.
        Target::Serial(s) => queries.push((CertKey::Serial, s.clone(), i64::MAX)),
        Target::Identity(k) => queries.push((CertKey::Identity, k.to_string(), until)),
        Target::Env(e) => queries.push((CertKey::Env, e.to_string(), until)),
        // The owner's identities, as listed when it was revoked.
        Target::Owner(_) => {}
        // The audit log does not record which key signed a certificate:
        // a retired CA's certificates are refused by their AuthorityKeyIdentifier
        // (and leave trust with the CA), not listed on the CRL.
        Target::SigningKey(_) => {}
    }
    // A node's (or an owner's) revocation lists the identities it carries.
    for id in &rev.identities {
        queries.push((CertKey::Identity, id.clone(), until));
    }
    let mut out = Vec::new();
    for (by, value, until) in queries {
        let query = CertQuery {
            by,
            value: &value,
            until,
        };
        let mut env: Option<Arc<str>> = None;
        for cert in store.issued_certificates(&query, now).await? {
            let name = cert.identity.split('/').next().unwrap_or_default();
            // One allocation per environment, not per certificate.
            let env = match &env {
                Some(e) if &**e == name => Arc::clone(e),
                _ => Arc::clone(env.insert(Arc::from(name))),
            };
            out.push(Covered {
                serial: cert.serial.into(),
                env,
                expires_at: cert.expires_at,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::Connection;

    use super::*;
    use crate::keys::CertificateAuthority;
    use crate::model::IdentityKey;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// A store whose audit log holds `revoked` certificates of dev/revoked
    /// and as many of dev/other.
    async fn store_with(dir: &std::path::Path, revoked: u32) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.join("t.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let key = crate::audit::ChainKey::for_tests();
        let entries: Vec<_> = (0..revoked * 2)
            .map(|i| crate::audit::AuditEntry {
                at_ms: 1_000_000,
                action: "renew_x509".into(),
                decision: "issued".into(),
                identity: Some(
                    if i % 2 == 0 {
                        "dev/revoked"
                    } else {
                        "dev/other"
                    }
                    .into(),
                ),
                env: Some("dev".into()),
                credential: Some("x509-svid".into()),
                serial: Some(format!("{:040X}", u64::from(i) * 7919 + 1)),
                expires_at: Some(i64::MAX / 2),
                ..Default::default()
            })
            .collect();
        for batch in entries.chunks(4096) {
            store.append_audit(batch, &key).await.unwrap();
        }
        store
    }

    fn identity_revocation(seq: i64) -> Arc<Revocation> {
        Arc::new(Revocation {
            seq,
            target: Target::Identity(IdentityKey::parse("dev/revoked").unwrap()),
            reason: "test".into(),
            operator: "admin".into(),
            revoked_at: 2_000,
            covers_until: i64::MAX,
            identities: vec![],
        })
    }

    #[tokio::test]
    async fn covered_certificates_are_found_once_per_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 50).await;
        let covered = CoveredCerts::default();
        let live = vec![identity_revocation(1)];
        let first = covered
            .revoked_in(store.as_ref(), &live, "dev", 10)
            .await
            .unwrap();
        assert_eq!(first.len(), 50, "only dev/revoked's certificates");
        assert!(first.iter().all(|c| c.revoked_at == 2_000));
        // Another environment's CRL lists none of them.
        assert!(
            covered
                .revoked_in(store.as_ref(), &live, "prod", 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Memoised: the store is not asked again (its rows are gone, the
        // answer is not).
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM audit_log")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            covered
                .revoked_in(store.as_ref(), &live, "dev", 10)
                .await
                .unwrap()
                .len(),
            50
        );
        // A revocation no longer live is forgotten.
        assert!(
            covered
                .revoked_in(store.as_ref(), &[], "dev", 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(covered.lock().is_empty());
    }

    /// The CRL with 100,000 revoked certificates (200,000 in the log):
    /// `cargo test -p credbroker --lib crl_of_100000 -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "benchmark: prints timings"]
    async fn crl_of_100000_revoked_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 100_000).await;
        let (ca, _) =
            CertificateAuthority::generate("bench", None, Duration::from_secs(86400)).unwrap();
        let covered = CoveredCerts::default();
        let live = vec![identity_revocation(1)];
        let rss0 = rss_kib();
        let t = Instant::now();
        let revoked = covered
            .revoked_in(store.as_ref(), &live, "dev", 10)
            .await
            .unwrap();
        let lookup = t.elapsed();
        let memo_kib = rss_kib().saturating_sub(rss0);
        let t = Instant::now();
        let again = covered
            .revoked_in(store.as_ref(), &live, "dev", 10)
            .await
            .unwrap();
        let from_memo = t.elapsed();
        let t = Instant::now();
        let der = super::super::crl::build(&ca, &again, 1, 10).unwrap();
        let sign = t.elapsed();
        assert_eq!(revoked.len(), 100_000);
        println!(
            "100,000 revoked certificates: indexed lookup once per revocation {lookup:?} \
             (RSS +{memo_kib} KiB); per change: set {from_memo:?} + CRL build {sign:?}; \
             CRL {} KiB",
            der.len() / 1024
        );
    }
}
