//! Rule `denial_burst`: many denials for one identity, or one peer
//! address, within a short window — someone probing.

use std::net::IpAddr;

use super::tracked::Tracked;

/// Whose denials are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An identity (`env/name`).
    Identity(String),
    /// A peer address.
    Peer(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    count: u32,
    flagged: bool,
}

/// Denials per identity and per peer address.
#[derive(Debug)]
pub struct DenialBurst {
    windows: Tracked<Subject, Window>,
    threshold: u32,
    window: i64,
}

impl DenialBurst {
    /// Flags `threshold` denials within `window` seconds.
    pub fn new(threshold: u32, window: i64, cap: usize) -> Self {
        Self {
            windows: Tracked::new(cap),
            threshold,
            window: window.max(1),
        }
    }

    /// A denial for `subject` at `now`; a finding once per window.
    pub fn denied(&self, subject: &Subject, now: i64) -> Option<String> {
        if self.threshold == 0 {
            return None;
        }
        let fresh = || Window {
            start: now,
            count: 0,
            flagged: false,
        };
        self.windows
            .with(subject, now, self.window, fresh, |w| {
                if now - w.start >= self.window {
                    *w = Window {
                        start: now,
                        count: 0,
                        flagged: false,
                    };
                }
                w.count = w.count.saturating_add(1);
                if !w.flagged && w.count >= self.threshold {
                    w.flagged = true;
                    let who = match subject {
                        Subject::Identity(key) => format!("identity {key}"),
                        Subject::Peer(ip) => format!("peer {ip}"),
                    };
                    return Some(format!(
                        "{} denials for {who} within {}s",
                        w.count, self.window
                    ));
                }
                None
            })
            .flatten()
    }
}
