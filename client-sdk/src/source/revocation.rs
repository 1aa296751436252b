//! Following the broker's revocation stream from inside a source.

use std::time::Duration;

use tokio::time::Instant;

use super::timing::jitter;

/// Typical wait before re-subscribing to a broken revocation stream.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

use super::Held;
use crate::client::WorkloadClient;
use crate::error::ClientError;

/// The source's subscription to the broker's revocation stream, resumed
/// from the last event seen.
#[derive(Default)]
pub(super) struct Revocations {
    stream: Option<tonic::Streaming<crate::Revocation>>,
    last_seq: i64,
}

impl Revocations {
    pub(super) async fn subscribe(&mut self, session: &WorkloadClient) {
        self.stream = match session.watch_revocations(self.last_seq).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                if e.code() == Some(tonic::Code::OutOfRange) {
                    // The broker's sequence is behind our cursor (a new
                    // database): the next try starts from the live list.
                    self.last_seq = 0;
                }
                tracing::warn!(error = %e, "cannot follow revocations; will retry");
                None
            }
        };
    }

    /// The next event; `None` when the caller should (re)subscribe: the
    /// stream broke, or there is none and a jittered retry delay (1–3 s)
    /// has passed.
    pub(super) async fn next(&mut self) -> Option<crate::Revocation> {
        let Some(stream) = self.stream.as_mut() else {
            tokio::time::sleep(jitter(RESUBSCRIBE_AFTER, 0.5)).await;
            return None;
        };
        match stream.message().await {
            Ok(Some(event)) => {
                self.last_seq = self.last_seq.max(event.seq);
                Some(event)
            }
            _ => {
                self.stream = None;
                None
            }
        }
    }
}

/// Whether `event` retires the CA key that signed `svid`.
pub(super) fn signed_by_retired_ca(svid: &crate::X509Svid, event: &crate::Revocation) -> bool {
    event.kind == "key"
        && svid
            .cert_chain
            .first()
            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
            .and_then(|(_, cert)| crate::authority_key_id(&cert))
            .is_some_and(|id| id == event.value)
}

/// What a revocation event means for the held credentials.
pub(super) enum Verdict {
    /// Nothing held is affected (or some JWTs were withdrawn for refetch).
    Keep,
    /// The SVID itself is revoked: stop.
    SvidRevoked(String),
}

/// Asks the broker about everything held after a revocation event; revoked
/// JWTs are withdrawn and made due for an immediate refetch.
pub(super) async fn check_revoked(held: &mut Held) -> Result<Verdict, ClientError> {
    if let Some(leaf) = held.creds.svid.cert_chain.first() {
        match held.session.introspect_certificate(leaf).await {
            Ok(answer) if !answer.active => return Ok(Verdict::SvidRevoked(answer.reason)),
            Ok(_) => {}
            // The broker refuses callers whose own SVID is revoked or whose
            // identity is out of service: that is the answer.
            Err(ClientError::Rejected(status))
                if status.code() == tonic::Code::PermissionDenied =>
            {
                return Ok(Verdict::SvidRevoked(status.message().to_owned()));
            }
            Err(e) => return Err(e),
        }
    }
    let mut revoked = Vec::new();
    for (audience, jwt) in &held.creds.jwts {
        let answer = held.session.introspect_token(&jwt.token).await?;
        if !answer.active {
            tracing::warn!(jti = %jwt.jti, reason = %answer.reason, "JWT revoked; fetching a new one");
            revoked.push(audience.clone());
        }
    }
    let now = Instant::now();
    for audience in revoked {
        held.creds.jwts.remove(&audience);
        held.jwt_due.insert(audience, now);
    }
    Ok(Verdict::Keep)
}
