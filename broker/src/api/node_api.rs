//! The node-agent half of the `Workload` service: the stream of identities a
//! node serves, and minting their credentials.
//!
//! The caller authenticates with the node's own X.509-SVID. The broker then
//! mints only for identities whose `parent` is that node, so a compromised
//! node can obtain no more than what was registered to it, and revoking or
//! disabling the node stops it at once. Workload keys are generated on the
//! host by the agent: the broker sees only CSRs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use credbroker_proto::v1::{
    self as pb, MintWorkloadJwtRequest, MintWorkloadJwtResponse, MintWorkloadSvidRequest,
    MintWorkloadSvidResponse, NodeEntriesUpdate, NodeEntry,
};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::{Request, Status};

use super::admin::identity_key;
use super::peer::WorkloadPeer;
use super::status;
use super::workload::WorkloadService;
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::issue::VerifiedCsr;
use crate::model::{Identity, IdentityKey, unix_now};
use crate::policy::check_active;
use crate::policy::node::is_served_by;

/// How often an open node stream re-checks the node (expiry by date).
const RECHECK_EVERY: Duration = Duration::from_secs(30);

fn identity_ref(key: &IdentityKey) -> pb::IdentityRef {
    pb::IdentityRef {
        env: key.env.to_string(),
        name: key.name.to_string(),
    }
}

fn entry(identity: &Identity) -> NodeEntry {
    NodeEntry {
        identity: Some(identity_ref(&identity.key)),
        spiffe_id: identity.spiffe_id.to_string(),
        selectors: identity
            .selectors
            .iter()
            .map(|s| pb::Selector {
                key: s.key.clone(),
                value: s.value.clone(),
            })
            .collect(),
        audiences: identity.audiences.iter().map(ToString::to_string).collect(),
        x509_ttl_seconds: identity.x509_ttl.as_secs() as u32,
        jwt_ttl_seconds: identity.jwt_ttl.as_secs() as u32,
    }
}

/// Why the node may no longer be served, if so.
fn node_refusal(broker: &Broker, peer: &WorkloadPeer, now: i64) -> Option<Status> {
    let Some(node) = broker.registry.get(&peer.identity) else {
        return Some(Status::permission_denied(format!(
            "node {} no longer exists",
            peer.identity
        )));
    };
    if let Some(rev) = broker.revocations.covers(&peer.facts(Some(&node.owner))) {
        return Some(Status::permission_denied(format!(
            "node certificate {} was revoked: {}",
            peer.serial, rev.reason
        )));
    }
    check_active(&node, now)
        .err()
        .map(|e| Status::permission_denied(format!("node: {e}")))
}

/// The snapshot: every active identity parented to `node`.
fn snapshot(
    broker: &Broker,
    node: &IdentityKey,
    now: i64,
) -> (NodeEntriesUpdate, HashSet<IdentityKey>) {
    let active: Vec<Arc<Identity>> = broker
        .registry
        .children(node)
        .into_iter()
        .filter(|c| check_active(c, now).is_ok())
        .collect();
    let served = active.iter().map(|c| c.key.clone()).collect();
    (
        NodeEntriesUpdate {
            snapshot: true,
            upserts: active.iter().map(|c| entry(c)).collect(),
            removed: vec![],
        },
        served,
    )
}

/// Streams the node's entries: a snapshot, then each change, until the
/// client goes away, the broker stops, or the node loses its standing
/// (disabled, retired, revoked), which ends the stream with
/// PERMISSION_DENIED. A subscriber that lags behind the change buffer gets
/// a fresh snapshot, so it misses nothing.
pub(super) async fn stream_node_entries(
    broker: Arc<Broker>,
    peer: Arc<WorkloadPeer>,
    tx: mpsc::Sender<Result<NodeEntriesUpdate, Status>>,
    mut stop: watch::Receiver<bool>,
) {
    let node = peer.identity.clone();
    // Subscribe before the snapshot so no change falls in between.
    let mut changes = broker.registry.subscribe();
    let mut revocations = broker.revocations.subscribe();
    let (first, mut served) = snapshot(&broker, &node, unix_now());
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    loop {
        let update = tokio::select! {
            change = changes.recv() => match change {
                Ok(identity) if identity.key == node => None,
                Ok(identity) => {
                    let now = unix_now();
                    let wanted = is_served_by(&identity, &node) && check_active(&identity, now).is_ok();
                    if wanted {
                        served.insert(identity.key.clone());
                        Some(NodeEntriesUpdate {
                            snapshot: false,
                            upserts: vec![entry(&identity)],
                            removed: vec![],
                        })
                    } else if served.remove(&identity.key) {
                        Some(NodeEntriesUpdate {
                            snapshot: false,
                            upserts: vec![],
                            removed: vec![identity_ref(&identity.key)],
                        })
                    } else {
                        continue;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let (fresh, now_served) = snapshot(&broker, &node, unix_now());
                    served = now_served;
                    Some(fresh)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            rev = revocations.recv() => match rev {
                Err(broadcast::error::RecvError::Closed) => return,
                // Covered by the check below either way.
                _ => None,
            },
            _ = recheck.tick() => None,
            _ = stop.wait_for(|s| *s) => return,
            () = tx.closed() => return,
        };
        if let Some(refusal) = node_refusal(&broker, &peer, unix_now()) {
            let _ = tx.send(Err(refusal)).await;
            return;
        }
        if let Some(update) = update
            && tx.send(Ok(update)).await.is_err()
        {
            return;
        }
    }
}

impl WorkloadService {
    /// The workload `r` names, which must be parented to the calling node
    /// and active. Unknown and foreign identities get the same answer, so a
    /// node learns nothing about identities that are not its own.
    fn served_workload(
        &self,
        node: &IdentityKey,
        r: Option<&pb::IdentityRef>,
        audit: &mut AuditRecord,
        now: i64,
    ) -> Result<Arc<Identity>, Status> {
        let key = identity_key(r)?;
        audit.identity = Some(key.to_string());
        audit.env = Some(key.env.to_string());
        audit.evidence = Some(format!("node:{node}"));
        let workload = self
            .broker()
            .registry
            .get(&key)
            .filter(|w| is_served_by(w, node))
            .ok_or_else(|| {
                Status::permission_denied(format!("identity {key} is not served by node {node}"))
            })?;
        check_active(&workload, now).map_err(status::policy)?;
        self.rates.sign_identity(&workload.key)?;
        Ok(workload)
    }

    /// `MintWorkloadSvid`: an X.509-SVID for a workload of the calling node.
    pub(super) fn mint_workload_svid_inner(
        &self,
        request: Request<MintWorkloadSvidRequest>,
        audit: &mut AuditRecord,
    ) -> Result<MintWorkloadSvidResponse, Status> {
        let now = unix_now();
        let (peer, node) = self.workload_caller(&request, audit, now)?;
        let req = request.into_inner();
        let workload = self.served_workload(&node.key, req.identity.as_ref(), audit, now)?;
        let csr = VerifiedCsr::parse(&req.csr).map_err(status::csr)?;
        let svid = self.svid(&peer.env, &workload, &csr, now, audit)?;
        self.note_issued(&workload, audit.peer, now);
        Ok(MintWorkloadSvidResponse {
            svid: Some(svid),
            trust_bundle: peer.env.trust_bundle(),
        })
    }

    /// `MintWorkloadJwt`: a JWT-SVID for a workload of the calling node. It
    /// carries no `cnf`: the workload, not the node, presents it (identities
    /// with a parent cannot require binding).
    pub(super) fn mint_workload_jwt_inner(
        &self,
        request: Request<MintWorkloadJwtRequest>,
        audit: &mut AuditRecord,
    ) -> Result<MintWorkloadJwtResponse, Status> {
        let now = unix_now();
        let (peer, node) = self.workload_caller(&request, audit, now)?;
        let req = request.into_inner();
        let workload = self.served_workload(&node.key, req.identity.as_ref(), audit, now)?;
        if workload.require_binding {
            // Refused at creation; a bearer token must never stand in for a
            // bound one.
            return Err(Status::failed_precondition(format!(
                "identity {} requires bound JWTs, which a node agent cannot obtain",
                workload.key
            )));
        }
        let jwt = req
            .jwt
            .ok_or_else(|| Status::invalid_argument("jwt request is required"))?;
        let grant = self
            .grants(&workload, std::slice::from_ref(&jwt))?
            .remove(0);
        let jwt = self.mint_jwt(&peer.env, &workload, &grant, None, now, audit)?;
        self.note_issued(&workload, audit.peer, now);
        Ok(MintWorkloadJwtResponse { jwt: Some(jwt) })
    }
}
