//! Rule `cloned_svid`: one certificate presented from two addresses within
//! a short window — two holders of one private key.

use std::net::IpAddr;

use super::tracked::Tracked;

/// Where each certificate (by serial) was last presented.
#[derive(Debug)]
pub struct ClonedSvid {
    last: Tracked<String, (IpAddr, i64)>,
    window: i64,
}

impl ClonedSvid {
    /// Flags two addresses within `window` seconds; tracks `cap` serials.
    pub fn new(window: i64, cap: usize) -> Self {
        Self {
            last: Tracked::new(cap),
            window,
        }
    }

    /// Certificate `serial` was presented from `ip` at `now`.
    pub fn presented(&self, serial: &str, ip: IpAddr, now: i64) -> Option<String> {
        if self.window <= 0 {
            return None;
        }
        self.last
            .with(
                serial,
                now,
                self.window,
                || (ip, now),
                |last| {
                    let (before, at) = *last;
                    *last = (ip, now);
                    (before != ip && now - at <= self.window).then(|| {
                        format!(
                            "certificate {serial} presented from {before} and {ip} within {}s",
                            now - at
                        )
                    })
                },
            )
            .flatten()
    }
}
