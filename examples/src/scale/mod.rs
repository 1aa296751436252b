//! The scale benchmark (`--example scale_bench`): what one broker sustains
//! for a large fleet served through node agents.
//!
//! A fleet is `nodes` hosts with `per_node` workloads each, registered
//! through the Admin API like an operator would ([`fleet`]). Each node is
//! played here by a [`node::NodeAgent`]: it attests with a join token, holds
//! one mutually authenticated connection with its node SVID, follows its
//! entries with `WatchNodeEntries`, and mints each workload's JWT-SVID and
//! X.509-SVID with `MintWorkloadJwt` and `MintWorkloadSvid` (a fresh key and
//! CSR per SVID, as `credbroker-agent --node` does), renewing each at half
//! its lifetime. The broker is the real `credbroker serve`, audit durable
//! before every reply; only the hosts' local Workload API sockets are left
//! out, which the broker never sees.
//!
//! The fleet starts as one that has been running for a while: each
//! workload's first renewal falls at a random point of its first half-life,
//! so the rate is steady from the first second. [`tally`] counts what each
//! renewal cost and how late it ran against its schedule (its lag).

pub mod fleet;
pub mod node;
pub mod tally;

/// Names and sizes of a fleet.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// Node identities.
    pub nodes: u32,
    /// Workload identities parented to each node.
    pub per_node: u32,
}

/// Environment-relative name prefix of everything the benchmark registers.
const PREFIX: &str = "scale";
/// The audience the workloads' JWTs are minted for.
pub const AUDIENCE: &str = "scale-bench";
/// First uid of a node's workloads (`unix:uid` selectors).
const UID_BASE: u32 = 10_000;

impl Fleet {
    /// Workloads in all.
    pub fn workloads(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.per_node)
    }

    /// The name of node `n`.
    pub fn node_name(n: u32) -> String {
        format!("{PREFIX}/node-{n:05}")
    }

    /// The name of workload `w` of node `n`.
    pub fn workload_name(n: u32, w: u32) -> String {
        format!("{PREFIX}/node-{n:05}/w-{w:05}")
    }

    /// The uid workload `w` of any node runs as.
    pub fn workload_uid(w: u32) -> u32 {
        UID_BASE + w
    }
}

/// SplitMix64: the spread of first renewals, reproducible per node, without
/// a random-number crate for one benchmark.
#[derive(Debug, Clone)]
pub struct Spread(u64);

impl Spread {
    /// A sequence seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value in [0, 1).
    pub fn next_fraction(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_reproducible_and_covers_the_interval() {
        let draws: Vec<f64> = {
            let mut s = Spread::new(7);
            (0..10_000).map(|_| s.next_fraction()).collect()
        };
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)));
        let mut again = Spread::new(7);
        assert_eq!(again.next_fraction(), draws[0]);
        // Roughly uniform: each tenth of the interval gets its share.
        for decile in 0..10 {
            let lo = f64::from(decile) / 10.0;
            let n = draws.iter().filter(|f| (lo..lo + 0.1).contains(*f)).count();
            assert!((800..1200).contains(&n), "decile {decile}: {n}");
        }
    }
}
