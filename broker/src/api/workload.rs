//! The `Workload` gRPC service: attest, fetch JWTs, renew certificates.

use std::sync::Arc;

use credbroker_proto::v1::workload_server::Workload;
use credbroker_proto::v1::{
    AttestRequest, AttestResponse, FetchJwtRequest, FetchJwtResponse, GetJwksRequest,
    GetJwksResponse, IntrospectRequest, IntrospectResponse, MintWorkloadJwtRequest,
    MintWorkloadJwtResponse, MintWorkloadSvidRequest, MintWorkloadSvidResponse, NodeEntriesUpdate,
    RenewX509Request, RenewX509Response, Revocation as ProtoRevocation, WatchNodeEntriesRequest,
    WatchRevocationsRequest,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

mod attest;
mod issuance;
mod revocation_stream;

use super::grpc_idle::Connections;
use super::peer::{Caller, WorkloadPeer};
use super::rate::RateLimits;
use super::{introspect, node_api, status};
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::issue::VerifiedCsr;
use crate::model::{EnvName, Identity, unix_now};
use crate::policy::{check_active, check_peer};

/// Revocation events buffered per subscriber stream.
const STREAM_BUFFER: usize = 256;

/// Implements `credbroker.v1.Workload`.
#[derive(Debug, Clone)]
pub struct WorkloadService {
    broker: Arc<Broker>,
    /// Turns true when the broker shuts down, to end open streams.
    stop: watch::Receiver<bool>,
    pub(super) rates: Arc<RateLimits>,
    streams: Arc<revocation_stream::StreamSlots>,
    connections: Connections,
}

impl WorkloadService {
    /// A service over `broker`; streams end when `stop` turns true.
    pub fn new(broker: Arc<Broker>, stop: watch::Receiver<bool>) -> Self {
        let rates = Arc::new(RateLimits::new(&broker.config.rate_limits));
        let streams = Arc::new(revocation_stream::StreamSlots::new(
            broker.config.connections.revocation_streams_per_caller,
        ));
        Self {
            broker,
            stop,
            rates,
            streams,
            connections: Connections::default(),
        }
    }

    /// Streams mark their connections busy in `connections`, so the idle
    /// timeout spares them.
    pub fn with_connections(mut self, connections: Connections) -> Self {
        self.connections = connections;
        self
    }

    /// The shared broker state.
    pub(super) fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Callers of read-only revocation APIs: the admin (who sees every
    /// environment, `None`), or a workload whose SVID is valid and not
    /// revoked and whose identity is active (who sees its own environment).
    fn require_authenticated<T>(&self, request: &Request<T>) -> Result<Option<EnvName>, Status> {
        self.authenticated_caller(request).map(|(scope, _)| scope)
    }

    /// [`Self::require_authenticated`], and who the caller is (`admin` or
    /// the workload's `env/name`).
    fn authenticated_caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Option<EnvName>, String), Status> {
        let now = unix_now();
        match self
            .broker
            .callers
            .authenticate(request, &self.broker.keys, now)?
        {
            Caller::Anonymous => Err(Status::unauthenticated(
                "this call needs a client certificate (an X.509-SVID)",
            )),
            Caller::Admin(op) => Ok((None, op.name.clone())),
            Caller::Workload(peer) => {
                let identity = self.broker.registry.get(&peer.identity).ok_or_else(|| {
                    Status::permission_denied(format!(
                        "identity {} no longer exists",
                        peer.identity
                    ))
                })?;
                if let Some(rev) = self
                    .broker
                    .revocations
                    .covers(&peer.facts(Some(&identity.owner)))
                {
                    return Err(Status::permission_denied(format!(
                        "certificate {} was revoked: {}",
                        peer.serial, rev.reason
                    )));
                }
                check_active(&identity, now).map_err(status::policy)?;
                Ok((Some(peer.identity.env.clone()), peer.identity.to_string()))
            }
        }
    }

    /// Makes sure this broker knows the calling workload's identity before
    /// a handler looks it up in memory: one created on another broker
    /// sharing the store a moment ago, whose change has not arrived yet,
    /// is read from the store (the caller's valid SVID shows it exists).
    /// Costs a cached certificate lookup when the identity is known.
    pub(super) async fn learn_caller<T: Sync>(&self, request: &Request<T>) {
        let missing = match self
            .broker
            .callers
            .authenticate(request, &self.broker.keys, unix_now())
        {
            Ok(Caller::Workload(peer)) if self.broker.registry.get(&peer.identity).is_none() => {
                peer.identity.clone()
            }
            _ => return,
        };
        if let Err(e) = self.broker.registry.get_or_load(&missing).await {
            tracing::warn!(identity = %missing, error = %e, "cannot read the caller's identity from the store");
        }
    }

    /// The caller, which must be a workload with a valid SVID, and its
    /// identity, which must be active.
    pub(super) fn workload_caller<T>(
        &self,
        request: &Request<T>,
        audit: &mut AuditRecord,
        now: i64,
    ) -> Result<(Arc<WorkloadPeer>, Arc<Identity>), Status> {
        let caller = self
            .broker
            .callers
            .authenticate(request, &self.broker.keys, now)?;
        audit.actor = Some(caller.actor());
        let Caller::Workload(peer) = caller else {
            return Err(match caller {
                Caller::Anonymous => Status::unauthenticated(
                    "this call needs a valid X.509-SVID as the TLS client certificate",
                ),
                _ => Status::permission_denied("this call is for workloads, not the admin"),
            });
        };
        audit.identity = Some(peer.identity.to_string());
        audit.env = Some(peer.identity.env.to_string());
        let identity = self.broker.registry.get(&peer.identity).ok_or_else(|| {
            Status::permission_denied(format!("identity {} no longer exists", peer.identity))
        })?;
        self.broker.registry.record_seen(&peer.identity, now);
        // Judged before the checks below: a cloned SVID counts even when
        // the call is refused for another reason.
        let found = self.broker.anomalies.presented(
            &peer.identity,
            &peer.serial,
            request.remote_addr(),
            now,
        );
        crate::anomaly::respond::report(&self.broker, found);
        let mut facts = peer.facts(Some(&identity.owner));
        if request.extensions().get::<RetiredCaRenewal>().is_some() {
            // Checked by `retired_ca_renewal`: only its CA's retirement
            // covers it, and this broker issued it.
            facts.signed_by = None;
        }
        if let Some(rev) = self.broker.revocations.covers(&facts) {
            return Err(Status::permission_denied(format!(
                "certificate {} was revoked: {}",
                peer.serial, rev.reason
            )));
        }
        check_active(&identity, now).map_err(status::policy)?;
        if let Some(node) = &identity.parent {
            // Its credentials come from its node's agent, which proves on
            // every call which process it is; the SVID alone is not enough.
            return Err(Status::permission_denied(format!(
                "identity {} is served by node {node}; only that node's agent obtains its credentials",
                identity.key
            )));
        }
        check_peer(&identity, request.remote_addr()).map_err(status::policy)?;
        Ok((peer, identity))
    }

    /// Records an issuance to `identity` for `peer` and judges it (issuance
    /// rate, staleness, environments per peer).
    pub(super) fn note_issued(
        &self,
        identity: &Identity,
        peer: Option<std::net::SocketAddr>,
        now: i64,
    ) {
        let previous = self
            .broker
            .registry
            .record_issued(&identity.key, now)
            .unwrap_or(identity.created_at);
        let found = self.broker.anomalies.issued(identity, previous, peer, now);
        crate::anomaly::respond::report(&self.broker, found);
    }

    fn fetch_jwt_inner(
        &self,
        request: Request<FetchJwtRequest>,
        audit: &mut AuditRecord,
    ) -> Result<FetchJwtResponse, Status> {
        let now = unix_now();
        let (peer, identity) = self.workload_caller(&request, audit, now)?;
        self.rates.sign_identity(&identity.key)?;
        let req = request
            .into_inner()
            .jwt
            .ok_or_else(|| Status::invalid_argument("jwt request is required"))?;
        let grant = self
            .grants(&identity, std::slice::from_ref(&req))?
            .remove(0);
        // Bound to the certificate that asked, when the identity says so;
        // otherwise a bearer token (a `cnf` that nobody enforces would make
        // RFC 8705 relying parties refuse it as a bearer token).
        let cnf = identity.require_binding.then(|| peer.cnf.clone());
        let jwt = self.mint_jwt(&peer.env, &identity, &grant, cnf, now, audit)?;
        self.note_issued(&identity, audit.peer, now);
        Ok(FetchJwtResponse { jwt: Some(jwt) })
    }

    fn renew_inner(
        &self,
        request: Request<RenewX509Request>,
        audit: &mut AuditRecord,
    ) -> Result<RenewX509Response, Status> {
        let now = unix_now();
        let (peer, identity) = self.workload_caller(&request, audit, now)?;
        self.rates.sign_identity(&identity.key)?;
        let csr = VerifiedCsr::parse(&request.into_inner().csr).map_err(status::csr)?;
        let svid = self.svid(&peer.env, &identity, &csr, now, audit)?;
        self.note_issued(&identity, audit.peer, now);
        Ok(RenewX509Response {
            svid: Some(svid),
            trust_bundle: peer.env.trust_bundle(),
        })
    }
}

/// Marks a RenewX509 whose caller may renew although the CA that signed its
/// SVID was retired (see [`WorkloadService::retired_ca_renewal`]).
#[derive(Debug, Clone, Copy)]
struct RetiredCaRenewal;

impl WorkloadService {
    /// Whether the caller's SVID is covered by nothing but the retirement of
    /// the CA that signed it, and is a certificate this broker issued (its
    /// serial is in the audit log). Such a workload renews from the new CA
    /// at once instead of being cut off; a certificate forged with the
    /// retired (possibly stolen) key has no issuance record and is refused.
    async fn retired_ca_renewal<T>(&self, request: &Request<T>) -> bool {
        // Every renewal passes here: while no key is retired (nearly always)
        // this costs one check and no certificate is looked at twice.
        if !self.broker.revocations.has_key_revocations() {
            return false;
        }
        let Ok(Caller::Workload(peer)) =
            self.broker
                .callers
                .authenticate(request, &self.broker.keys, unix_now())
        else {
            return false;
        };
        let owner = self
            .broker
            .registry
            .get(&peer.identity)
            .map(|i| i.owner.clone());
        let facts = peer.facts(owner.as_deref());
        let Some(rev) = self.broker.revocations.covers(&facts) else {
            return false;
        };
        if !matches!(rev.target, crate::revocation::Target::SigningKey(_)) {
            return false;
        }
        let without_key = crate::revocation::CredentialFacts {
            signed_by: None,
            ..facts
        };
        if self.broker.revocations.covers(&without_key).is_some() {
            return false;
        }
        super::revoke_api::issued_expiry(
            &self.broker,
            crate::audit::AuditFilter {
                serial: Some(peer.serial.clone()),
                ..Default::default()
            },
            "this serial",
        )
        .await
        .is_ok()
    }
}

/// Hands out what a request issued once its audit records are committed,
/// or records the refusal.
async fn deliver<T>(
    broker: &Arc<Broker>,
    result: Result<T, Status>,
    audit: &AuditRecord,
) -> Result<Response<T>, Status> {
    let result = match result {
        Ok(value) => audit
            .commit_issued()
            .await
            .map(|()| value)
            .map_err(status::audit),
        Err(e) => Err(e),
    };
    finish(broker, result, audit)
}

fn finish<T>(
    broker: &Arc<Broker>,
    result: Result<T, Status>,
    audit: &AuditRecord,
) -> Result<Response<T>, Status> {
    match result {
        Ok(value) => Ok(Response::new(value)),
        Err(status) => {
            audit.denied(&status::reason(&status));
            let found = broker
                .anomalies
                .denied(audit.identity.as_deref(), audit.peer, unix_now());
            crate::anomaly::respond::report(broker, found);
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl Workload for WorkloadService {
    type WatchRevocationsStream = ReceiverStream<Result<ProtoRevocation, Status>>;
    type WatchNodeEntriesStream = ReceiverStream<Result<NodeEntriesUpdate, Status>>;

    async fn watch_node_entries(
        &self,
        request: Request<WatchNodeEntriesRequest>,
    ) -> Result<Response<Self::WatchNodeEntriesStream>, Status> {
        let mut audit = AuditRecord::new(
            &self.broker.audit,
            "watch_node_entries",
            request.remote_addr(),
        );
        self.learn_caller(&request).await;
        let (peer, _node) = match self.workload_caller(&request, &mut audit, unix_now()) {
            Ok(caller) => caller,
            Err(e) => {
                audit.denied(&status::reason(&e));
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let busy = self.connections.stream(request.remote_addr());
        let stream =
            node_api::stream_node_entries(Arc::clone(&self.broker), peer, tx, self.stop.clone());
        tokio::spawn(async move {
            stream.await;
            drop(busy);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn mint_workload_svid(
        &self,
        request: Request<MintWorkloadSvidRequest>,
    ) -> Result<Response<MintWorkloadSvidResponse>, Status> {
        self.rates.sign_peer(request.remote_addr())?;
        let mut audit = AuditRecord::new(
            &self.broker.audit,
            "mint_workload_svid",
            request.remote_addr(),
        );
        self.learn_caller(&request).await;
        let result = self.mint_workload_svid_inner(request, &mut audit);
        deliver(&self.broker, result, &audit).await
    }

    async fn mint_workload_jwt(
        &self,
        request: Request<MintWorkloadJwtRequest>,
    ) -> Result<Response<MintWorkloadJwtResponse>, Status> {
        self.rates.sign_peer(request.remote_addr())?;
        let mut audit = AuditRecord::new(
            &self.broker.audit,
            "mint_workload_jwt",
            request.remote_addr(),
        );
        self.learn_caller(&request).await;
        let result = self.mint_workload_jwt_inner(request, &mut audit);
        deliver(&self.broker, result, &audit).await
    }

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        self.learn_caller(&request).await;
        self.open_revocation_stream(request)
    }

    async fn get_jwks(
        &self,
        request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        let env = request.into_inner().env;
        let keys = EnvName::new(&env)
            .ok()
            .and_then(|name| self.broker.keys.env(&name))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "environment {} is not served here",
                    super::limits::quote(&env)
                ))
            })?;
        Ok(Response::new(GetJwksResponse {
            issuer: self.broker.issuer(&env),
            trust_domain: keys.env.trust_domain.to_string(),
            jwks: keys.jwks("sig").to_string(),
            refresh_hint_seconds: keys.refresh_hint.as_secs() as u32,
        }))
    }

    async fn introspect(
        &self,
        request: Request<IntrospectRequest>,
    ) -> Result<Response<IntrospectResponse>, Status> {
        self.learn_caller(&request).await;
        let scope = self.require_authenticated(&request)?;
        let request = request.into_inner();
        Ok(Response::new(introspect::introspect(
            &self.broker,
            request.credential,
            (!request.presented_certificate.is_empty())
                .then_some(request.presented_certificate.as_slice()),
            unix_now(),
            scope.as_ref(),
        )))
    }

    async fn attest(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        self.rates.attest(request.remote_addr())?;
        let mut audit = AuditRecord::new(&self.broker.audit, "attest", request.remote_addr());
        let method = attest::method(request.get_ref());
        let result = self.attest_inner(request, &mut audit).await;
        let result = deliver(&self.broker, result, &audit).await;
        self.broker.metrics.attested(method, result.is_ok());
        result
    }

    async fn fetch_jwt(
        &self,
        request: Request<FetchJwtRequest>,
    ) -> Result<Response<FetchJwtResponse>, Status> {
        self.rates.sign_peer(request.remote_addr())?;
        let mut audit = AuditRecord::new(&self.broker.audit, "fetch_jwt", request.remote_addr());
        self.learn_caller(&request).await;
        let result = self.fetch_jwt_inner(request, &mut audit);
        deliver(&self.broker, result, &audit).await
    }

    async fn renew_x509(
        &self,
        mut request: Request<RenewX509Request>,
    ) -> Result<Response<RenewX509Response>, Status> {
        self.rates.sign_peer(request.remote_addr())?;
        let mut audit = AuditRecord::new(&self.broker.audit, "renew_x509", request.remote_addr());
        if self.retired_ca_renewal(&request).await {
            request.extensions_mut().insert(RetiredCaRenewal);
        }
        self.learn_caller(&request).await;
        let result = self.renew_inner(request, &mut audit);
        deliver(&self.broker, result, &audit).await
    }
}
