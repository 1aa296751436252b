//! Request-time context: facts about the call itself (where it comes
//! from), checked on every Attest, FetchJwt and RenewX509.

use std::net::SocketAddr;

use super::PolicyError;
use crate::model::Identity;

/// Refuses a call to `identity` from `peer` unless the identity allows
/// every network (no `allow_cidrs`) or one of its networks contains the
/// peer's address.
pub fn check_peer(identity: &Identity, peer: Option<SocketAddr>) -> Result<(), PolicyError> {
    if identity.allow_cidrs.is_empty() {
        return Ok(());
    }
    let allowed = || {
        identity
            .allow_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(peer) = peer else {
        return Err(PolicyError::Denied(format!(
            "identity {} only accepts calls from {}, and this call's peer address is unknown",
            identity.key,
            allowed()
        )));
    };
    if identity.allow_cidrs.iter().any(|c| c.contains(peer.ip())) {
        Ok(())
    } else {
        Err(PolicyError::Denied(format!(
            "peer address {} is outside the networks identity {} allows ({})",
            peer.ip(),
            identity.key,
            allowed()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_identity;

    #[test]
    fn peer_must_be_in_an_allowed_network() {
        let mut id = test_identity();
        let peer: SocketAddr = "10.2.0.7:5000".parse().unwrap();
        check_peer(&id, Some(peer)).unwrap();
        check_peer(&id, None).unwrap();
        id.allow_cidrs = vec!["10.2.0.0/16".parse().unwrap()];
        check_peer(&id, Some(peer)).unwrap();
        let err = check_peer(&id, Some("10.9.0.1:1".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("outside the networks"), "{err}");
        assert!(check_peer(&id, None).is_err());
    }
}
