//! Outstanding credentials: what an identity holds that still works.

use std::collections::HashMap;

use tonic::Status;

use super::status;
use crate::broker::Broker;
use crate::model::{IdentityKey, unix_now};
use crate::revocation::CredentialFacts;
use crate::store::OutstandingCredential;

/// Issued credentials unexpired now and not revoked, from the audit log
/// and the live revocations: every identity's, or `identity`'s only.
async fn live(
    broker: &Broker,
    identity: Option<&str>,
) -> Result<Vec<OutstandingCredential>, Status> {
    broker.audit.flush().await.map_err(status::audit)?;
    let issued = broker
        .store
        .outstanding_credentials(unix_now(), identity)
        .await
        .map_err(status::store)?;
    Ok(issued
        .into_iter()
        .filter(|c| !is_revoked(broker, c))
        .collect())
}

/// A revoked credential is dead however far off its expiry: counting it
/// would send an operator hunting for something harmless.
fn is_revoked(broker: &Broker, c: &OutstandingCredential) -> bool {
    IdentityKey::parse(&c.identity).is_ok_and(|key| {
        let owner = broker.registry.get(&key).map(|i| i.owner.clone());
        broker
            .revocations
            .covers(&CredentialFacts {
                jti: c.jti.as_deref(),
                serial: c.serial.as_deref(),
                identity: &key,
                owner: owner.as_deref(),
                issued_at: c.issued_at,
                // The audit log does not record the signing key, so a
                // retired key's revocation is not reflected here.
                signed_by: None,
            })
            .is_some()
    })
}

/// Unexpired, unrevoked issued credentials per identity (`env/name`).
pub(crate) async fn count(broker: &Broker) -> Result<HashMap<String, u32>, Status> {
    let mut counts = HashMap::new();
    for c in live(broker, None).await? {
        let n: &mut u32 = counts.entry(c.identity).or_default();
        *n = n.saturating_add(1);
    }
    Ok(counts)
}

/// How many unexpired, unrevoked credentials `key` holds.
pub(crate) async fn count_of(broker: &Broker, key: &IdentityKey) -> Result<u32, Status> {
    let n = live(broker, Some(&key.to_string())).await?.len();
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// The unexpired, unrevoked credentials of `key`, newest first.
pub(crate) async fn of_identity(
    broker: &Broker,
    key: &IdentityKey,
) -> Result<Vec<OutstandingCredential>, Status> {
    let mut mine = live(broker, Some(&key.to_string())).await?;
    mine.sort_by_key(|c| std::cmp::Reverse(c.issued_at));
    Ok(mine)
}
