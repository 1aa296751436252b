//! Following the broker's revocation stream on the receiving side.
//!
//! [`RevocationWatcher`] holds what a relying party needs to refuse revoked
//! JWTs and certificates without asking the broker per request: revoked
//! `jti`s and serials, and identity / environment / owner revocations with
//! the time they took effect (credentials issued at or before it are
//! covered). [`RevocationWatcher::follow`] keeps it current, resuming from
//! the last event seen after any disconnect so nothing is missed; entries
//! are dropped once everything they cover has expired.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;

use crate::Revocation;
use crate::client::WorkloadClient;

/// NotBefore of broker-issued certificates is this much before issuance.
const BACKDATE_SECONDS: i64 = 30;

#[derive(Debug, Default)]
struct State {
    last_seq: i64,
    /// `jti` or serial → (reason, covers_until).
    single: HashMap<String, (String, i64)>,
    /// `env/name` → (reason, revoked_at, covers_until).
    identities: HashMap<String, (String, i64, i64)>,
    /// env → (reason, revoked_at, covers_until).
    envs: HashMap<String, (String, i64, i64)>,
    /// Retired signing key id (JWT `kid`, CA key identifier) → (reason,
    /// covers_until): everything it signed is revoked.
    keys: HashMap<String, (String, i64)>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl State {
    fn apply(&mut self, r: &Revocation) {
        self.last_seq = self.last_seq.max(r.seq);
        let group = (r.reason.clone(), r.revoked_at, r.covers_until);
        let add = |map: &mut HashMap<String, (String, i64, i64)>, key: &str| {
            if map.get(key).is_none_or(|cur| cur.1 < r.revoked_at) {
                map.insert(key.to_owned(), group.clone());
            }
        };
        match r.kind.as_str() {
            "jti" => {
                self.single.insert(
                    format!("jti:{}", r.value),
                    (r.reason.clone(), r.covers_until),
                );
            }
            "serial" => {
                self.single.insert(
                    format!("serial:{}", r.value.to_ascii_uppercase()),
                    (r.reason.clone(), r.covers_until),
                );
            }
            "identity" => {
                add(&mut self.identities, &r.value);
                // A revoked node takes the workloads it serves with it.
                for identity in &r.identities {
                    add(&mut self.identities, identity);
                }
            }
            "env" => add(&mut self.envs, &r.value),
            "key" => {
                self.keys
                    .insert(r.value.clone(), (r.reason.clone(), r.covers_until));
            }
            "owner" => {
                for identity in &r.identities {
                    add(&mut self.identities, identity);
                }
            }
            other => tracing::warn!(kind = other, "unknown revocation kind ignored"),
        }
    }

    fn prune(&mut self, now: i64) {
        self.single.retain(|_, v| v.1 >= now);
        self.identities.retain(|_, v| v.2 >= now);
        self.envs.retain(|_, v| v.2 >= now);
        self.keys.retain(|_, v| v.1 >= now);
    }

    fn covers(&self, single: &str, identity: &str, env: &str, issued_at: i64) -> Option<String> {
        if let Some((reason, _)) = self.single.get(single) {
            return Some(reason.clone());
        }
        let group = |hit: Option<&(String, i64, i64)>| {
            hit.filter(|(_, at, _)| issued_at <= *at)
                .map(|(r, _, _)| r.clone())
        };
        group(self.identities.get(identity)).or_else(|| group(self.envs.get(env)))
    }
}

/// What has been revoked, kept current from the broker's stream.
#[derive(Debug, Clone, Default)]
pub struct RevocationWatcher {
    state: Arc<RwLock<State>>,
}

impl RevocationWatcher {
    /// Applies one event.
    pub fn apply(&self, revocation: &Revocation) {
        if let Ok(mut state) = self.state.write() {
            state.apply(revocation);
            state.prune(now());
        }
    }

    /// The sequence number of the last event applied.
    pub fn last_seq(&self) -> i64 {
        self.state.read().map(|s| s.last_seq).unwrap_or(0)
    }

    /// Why everything signed by key `key_id` (a JWT `kid`, or a CA's key
    /// identifier as [`crate::authority_key_id`] reads it) is revoked — or
    /// `None`.
    pub fn key_revoked(&self, key_id: &str) -> Option<String> {
        self.state
            .read()
            .ok()?
            .keys
            .get(key_id)
            .map(|(reason, _)| reason.clone())
    }

    /// Why the JWT `jti` of identity `identity` (`env/name`) in `env`,
    /// issued at `iat`, is revoked — or `None`.
    pub fn jwt_revoked(&self, jti: &str, identity: &str, env: &str, iat: i64) -> Option<String> {
        self.state
            .read()
            .ok()?
            .covers(&format!("jti:{jti}"), identity, env, iat)
    }

    /// Why the X.509-SVID `der` of environment `env` (trust domain
    /// `trust_domain`) is revoked — or `None`. A certificate that cannot be
    /// read as an SVID of that trust domain counts as revoked.
    pub fn certificate_revoked(&self, der: &[u8], env: &str, trust_domain: &str) -> Option<String> {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Some("not a certificate".to_owned());
        };
        let serial: String = cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let prefix = format!("spiffe://{trust_domain}/");
        let name = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(uri) => uri.strip_prefix(prefix.as_str()),
                    _ => None,
                })
            });
        let Some(name) = name else {
            return Some(format!("no SPIFFE ID in trust domain {trust_domain}"));
        };
        if let Some(reason) = crate::authority_key_id(&cert).and_then(|k| self.key_revoked(&k)) {
            return Some(reason);
        }
        let issued_at = cert.validity().not_before.timestamp() + BACKDATE_SECONDS;
        self.state.read().ok()?.covers(
            &format!("serial:{serial}"),
            &format!("{env}/{name}"),
            env,
            issued_at,
        )
    }

    /// Subscribes to the broker's revocation stream with `session` (an
    /// SVID-authenticated client) and applies every event, reconnecting
    /// with backoff from the last event seen whenever the stream breaks.
    /// Runs until the returned task is aborted.
    pub fn follow(&self, session: WorkloadClient) -> tokio::task::JoinHandle<()> {
        let watcher = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match session.watch_revocations(watcher.last_seq()).await {
                    Ok(mut stream) => {
                        delay = Duration::from_millis(200);
                        while let Ok(Some(event)) = stream.message().await {
                            watcher.apply(&event);
                        }
                    }
                    Err(e) if e.code() == Some(tonic::Code::OutOfRange) => {
                        // The broker's sequence is behind our cursor (a new
                        // database): start again from the whole live list.
                        tracing::warn!(error = %e, "revocation cursor past the broker's end; resubscribing from the start");
                        if let Ok(mut s) = watcher.state.write() {
                            s.last_seq = 0;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "revocation stream unavailable; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(seq: i64, kind: &str, value: &str, revoked_at: i64) -> Revocation {
        Revocation {
            seq,
            kind: kind.into(),
            value: value.into(),
            reason: format!("r{seq}"),
            operator: "admin".into(),
            revoked_at,
            covers_until: i64::MAX,
            identities: vec![],
        }
    }

    #[test]
    fn covers_by_kind_and_issue_time() {
        let w = RevocationWatcher::default();
        w.apply(&rev(1, "jti", "j1", 100));
        w.apply(&rev(2, "identity", "dev/api", 200));
        let mut owner = rev(3, "owner", "team", 300);
        owner.identities = vec!["dev/batch".into()];
        w.apply(&owner);
        assert_eq!(w.last_seq(), 3);
        assert_eq!(w.jwt_revoked("j1", "dev/x", "dev", 0), Some("r1".into()));
        assert_eq!(
            w.jwt_revoked("j2", "dev/api", "dev", 200),
            Some("r2".into())
        );
        assert_eq!(w.jwt_revoked("j2", "dev/api", "dev", 201), None);
        assert_eq!(
            w.jwt_revoked("j2", "dev/batch", "dev", 250),
            Some("r3".into())
        );
        w.apply(&rev(4, "env", "dev", 400));
        assert_eq!(
            w.jwt_revoked("j9", "dev/other", "dev", 399),
            Some("r4".into())
        );
        let mut expired = rev(5, "jti", "old", 10);
        expired.covers_until = 50;
        if let Ok(mut s) = w.state.write() {
            s.apply(&expired);
            s.prune(60);
        }
        assert_eq!(w.jwt_revoked("old", "dev/x", "prod", 0), None);
    }

    #[test]
    fn certificates_by_serial_and_identity() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://dev.example.org/api".try_into().unwrap(),
        )];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x4A, 0x0B]));
        params.not_before = time_at(1_000);
        let cert = params.self_signed(&key).unwrap();
        let w = RevocationWatcher::default();
        assert_eq!(
            w.certificate_revoked(cert.der(), "dev", "dev.example.org"),
            None
        );
        assert!(
            w.certificate_revoked(cert.der(), "prod", "prod.example.org")
                .is_some()
        );
        w.apply(&rev(1, "serial", "4a0b", 5_000));
        assert_eq!(
            w.certificate_revoked(cert.der(), "dev", "dev.example.org"),
            Some("r1".into())
        );
        let w = RevocationWatcher::default();
        w.apply(&rev(1, "identity", "dev/api", 1_030));
        assert!(
            w.certificate_revoked(cert.der(), "dev", "dev.example.org")
                .is_some()
        );
        let w = RevocationWatcher::default();
        w.apply(&rev(1, "identity", "dev/api", 1_029));
        assert_eq!(
            w.certificate_revoked(cert.der(), "dev", "dev.example.org"),
            None
        );
    }

    fn time_at(secs: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }
}
