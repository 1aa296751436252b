//! Rule `new_peer`: an SVID presented from an address never seen for its
//! identity. Addresses an identity attested or was issued from are seen;
//! the first address after a restart is learnt, not flagged.

use std::net::IpAddr;

use super::tracked::Tracked;
use crate::model::IdentityKey;

/// Addresses remembered per identity (the oldest is forgotten first).
pub const ADDRESSES_PER_IDENTITY: usize = 32;

/// Known addresses per identity.
#[derive(Debug)]
pub struct NewPeer {
    seen: Tracked<IdentityKey, Vec<IpAddr>>,
}

impl NewPeer {
    /// Tracks at most `cap` identities.
    pub fn new(cap: usize) -> Self {
        Self {
            seen: Tracked::new(cap),
        }
    }

    fn note(seen: &mut Vec<IpAddr>, ip: IpAddr) {
        if seen.len() == ADDRESSES_PER_IDENTITY {
            seen.remove(0);
        }
        seen.push(ip);
    }

    /// `key` attested or was issued from `ip`: seen from now on.
    pub fn learn(&self, key: &IdentityKey, ip: IpAddr, now: i64) {
        self.seen.with(key, now, i64::MAX, Vec::new, |seen| {
            if !seen.contains(&ip) {
                Self::note(seen, ip);
            }
        });
    }

    /// `key`'s SVID was presented from `ip`: a finding when `ip` is new.
    pub fn presented(&self, key: &IdentityKey, ip: IpAddr, now: i64) -> Option<String> {
        self.seen
            .with(key, now, i64::MAX, Vec::new, |seen| {
                if seen.contains(&ip) {
                    return None;
                }
                let known = seen.iter().map(ToString::to_string).collect::<Vec<_>>();
                Self::note(seen, ip);
                (!known.is_empty()).then(|| {
                    format!(
                        "credential presented from {ip}, never seen for this identity (seen: {})",
                        known.join(", ")
                    )
                })
            })
            .flatten()
    }
}
