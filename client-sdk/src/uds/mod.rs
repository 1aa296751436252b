//! The Workload API's Unix socket: created safely, every connection tagged
//! with its caller's kernel-reported credentials, and any `:authority` a
//! client sends accepted.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use credbroker_client::uds::{SocketOptions, bind};
//! let listener = bind(
//!     std::path::Path::new("/run/credbroker/agent.sock"),
//!     &SocketOptions { mode: 0o660, group: Some("app".into()) },
//! )?;
//! let incoming = listener.incoming(); // for Server::serve_with_incoming_shutdown
//! # let _ = incoming; Ok(()) }
//! ```

pub mod authority;
mod connection;
mod listener;
pub mod streams;

pub use connection::UdsConnection;
pub use listener::{Incoming, UdsListener, bind};

/// How the socket file is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Permission bits of the socket (connecting needs write permission).
    pub mode: u32,
    /// Group that owns the socket: a name from /etc/group or a numeric gid.
    pub group: Option<String>,
}

impl Default for SocketOptions {
    /// Owner only (0600), the agent's own group.
    fn default() -> Self {
        Self {
            mode: 0o600,
            group: None,
        }
    }
}

/// The connecting process, as the kernel recorded it at `connect`
/// (SO_PEERCRED). Handlers read it with
/// `request.extensions().get::<PeerCred>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id (absent when the kernel does not report one).
    pub pid: Option<i32>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id (supplementary groups are not reported).
    pub gid: u32,
}

/// Which callers may use the socket, on top of its file mode: a caller is
/// admitted when its uid or its gid is listed. Empty lists admit everyone
/// who can open the socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedPeers {
    /// Admitted user ids (`--allow-uid`).
    pub uids: Vec<u32>,
    /// Admitted effective group ids (`--allow-gid`).
    pub gids: Vec<u32>,
}

impl AllowedPeers {
    /// Whether every caller is admitted.
    pub fn is_open(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    /// Admits or refuses `peer`. With a restriction in place a call without
    /// peer credentials (not from the socket) is refused: fail closed.
    pub fn check(&self, peer: Option<&PeerCred>) -> Result<(), tonic::Status> {
        if self.is_open() {
            return Ok(());
        }
        match peer {
            Some(p) if self.uids.contains(&p.uid) || self.gids.contains(&p.gid) => Ok(()),
            Some(p) => Err(tonic::Status::permission_denied(format!(
                "uid {} (gid {}) is not allowed to use this Workload API socket",
                p.uid, p.gid
            ))),
            None => Err(tonic::Status::permission_denied(
                "caller has no peer credentials; this Workload API admits only listed uids/gids",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_peers_admit_listed_uids_or_gids_only() {
        let peer = |uid, gid| PeerCred {
            pid: Some(1),
            uid,
            gid,
        };
        let open = AllowedPeers::default();
        assert!(open.check(Some(&peer(7, 7))).is_ok());
        assert!(open.check(None).is_ok());
        let only = AllowedPeers {
            uids: vec![1000],
            gids: vec![50],
        };
        assert!(only.check(Some(&peer(1000, 1))).is_ok());
        assert!(only.check(Some(&peer(2, 50))).is_ok());
        let refused = only.check(Some(&peer(65534, 65534))).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("uid 65534"), "{refused:?}");
        assert_eq!(
            only.check(None).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
}
