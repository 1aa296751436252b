//! Rule `cross_env`: one peer address asking for identities of several
//! environments within a window — a staging host reaching for prod.

use std::net::IpAddr;

use super::tracked::Tracked;

/// Environments remembered per address.
const ENVS_PER_PEER: usize = 16;

#[derive(Debug, Default)]
struct Seen {
    envs: Vec<(String, i64)>,
    flagged_at: Option<i64>,
}

/// Environments asked for per peer address.
#[derive(Debug)]
pub struct CrossEnv {
    peers: Tracked<IpAddr, Seen>,
    threshold: usize,
    window: i64,
}

impl CrossEnv {
    /// Flags `threshold` environments within `window` seconds.
    pub fn new(threshold: u32, window: i64, cap: usize) -> Self {
        Self {
            peers: Tracked::new(cap),
            threshold: threshold as usize,
            window: window.max(1),
        }
    }

    /// `ip` asked for an identity of `env` at `now`.
    pub fn request(&self, ip: IpAddr, env: &str, now: i64) -> Option<String> {
        if self.threshold == 0 {
            return None;
        }
        self.peers
            .with(&ip, now, self.window, Seen::default, |seen| {
                seen.envs.retain(|(_, at)| now - at < self.window);
                match seen.envs.iter_mut().find(|(e, _)| e == env) {
                    Some(entry) => entry.1 = now,
                    None => {
                        if seen.envs.len() == ENVS_PER_PEER {
                            seen.envs.remove(0);
                        }
                        seen.envs.push((env.to_owned(), now));
                    }
                }
                let recently_flagged = seen.flagged_at.is_some_and(|at| now - at < self.window);
                if seen.envs.len() >= self.threshold && !recently_flagged {
                    seen.flagged_at = Some(now);
                    let envs: Vec<&str> = seen.envs.iter().map(|(e, _)| e.as_str()).collect();
                    return Some(format!(
                        "peer {ip} asked for identities of {} environments within {}s: {}",
                        envs.len(),
                        self.window,
                        envs.join(", ")
                    ));
                }
                None
            })
            .flatten()
    }
}
