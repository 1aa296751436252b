//! What a finding does: an audit record (`action = anomaly`, decision
//! `flagged`, the kind and details), a count in
//! `credbroker_anomalies_total{kind}`, a flag on the identity's page, and
//! for an identity registered with `--on-anomaly disable`, disabling it
//! (audited as an `identity.disable` by actor `credbroker`).

use std::sync::Arc;

use super::Found;
use crate::api::identity_change::{self, IdentityChange};
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::model::OnAnomaly;

/// The audit actor of what the broker does by itself.
pub const SYSTEM_ACTOR: &str = "credbroker";

/// Reports each of `found`.
pub fn report(broker: &Arc<Broker>, found: Vec<Found>) {
    for f in found {
        let kind = f.finding.kind;
        broker.metrics.anomaly(kind);
        let mut audit = AuditRecord::new(&broker.audit, "anomaly", f.peer);
        audit.actor = Some(SYSTEM_ACTOR.to_owned());
        audit.identity = f.identity.as_ref().map(ToString::to_string);
        audit.env = f.identity.as_ref().map(|k| k.env.to_string());
        audit.flagged(&format!("{}: {}", kind.as_str(), f.finding.detail));
        let Some(key) = f.identity else { continue };
        let Some(identity) = broker.registry.get(&key) else {
            continue;
        };
        broker.anomalies.recent.push(&key, f.finding.clone());
        if identity.on_anomaly == OnAnomaly::Disable && identity.enabled {
            // Off the request's path: the store write must not delay the
            // answer, and the request already in flight is not the point.
            let broker = Arc::clone(broker);
            tokio::spawn(async move {
                let mut audit =
                    AuditRecord::new(&broker.audit, IdentityChange::Disable.action(), f.peer);
                audit.actor = Some(SYSTEM_ACTOR.to_owned());
                let reason = format!("--on-anomaly disable: {}", kind.as_str());
                if let Err(e) = identity_change::apply(
                    &broker,
                    &key,
                    IdentityChange::Disable,
                    &reason,
                    &mut audit,
                )
                .await
                {
                    tracing::error!(error = %e, identity = %key, "could not disable after an anomaly");
                }
            });
        }
    }
}
