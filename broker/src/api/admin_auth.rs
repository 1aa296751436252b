//! Who may call which Admin RPC: the caller must hold an admin CA
//! certificate (the bootstrap admin's or an unrevoked named operator's)
//! whose role reaches the RPC's minimum in
//! [`crate::policy::roles::ADMIN_RPC_ROLES`]. Every refusal is audited,
//! with the operator's name as actor when it is known.

use std::sync::Arc;

use tonic::{Request, Status};

use super::operators::OperatorPeer;
use super::peer::Caller;
use super::status;
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::model::unix_now;
use crate::policy::roles::required_role;

/// Authenticates the caller of Admin RPC `rpc` and checks its role.
pub(super) fn authorize<T>(
    broker: &Broker,
    request: &Request<T>,
    rpc: &'static str,
    audit: &mut AuditRecord,
) -> Result<Arc<OperatorPeer>, Status> {
    let caller = match broker
        .callers
        .authenticate(request, &broker.keys, unix_now())
    {
        Ok(c) => c,
        Err(e) => {
            audit.denied(&status::reason(&e));
            return Err(e);
        }
    };
    audit.actor = Some(caller.actor());
    let refusal = match caller {
        Caller::Admin(op) => {
            let needed = required_role(rpc);
            if op.role >= needed {
                return Ok(op);
            }
            Status::permission_denied(format!(
                "{rpc} needs role {needed}; operator {} has role {}",
                op.name, op.role
            ))
        }
        Caller::Anonymous => {
            Status::unauthenticated("admin calls need an admin or operator client certificate")
        }
        Caller::Workload(_) => Status::permission_denied(
            "admin calls need an admin or operator client certificate, not an SVID",
        ),
    };
    audit.denied(&status::reason(&refusal));
    Err(refusal)
}
