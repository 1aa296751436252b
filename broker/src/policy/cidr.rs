//! IP networks in CIDR notation (`10.2.0.0/16`, `fd00::/8`), for the
//! request-time check of where a credential call comes from.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network: address with the host bits cleared, and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network like 10.2.0.0/16 or fd00::/8")]
pub struct CidrError(String);

fn mask(bits: u32, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (!0u128 << (bits - u32::from(prefix))) & (!0u128 >> (128 - bits))
    }
}

fn to_bits(addr: IpAddr) -> (u128, u32) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let (bits, width) = to_bits(addr);
        if u32::from(prefix) > width {
            return Err(err());
        }
        let net = bits & mask(width, prefix);
        if net != bits {
            // 10.2.3.4/16 almost always means a typo; say so instead of guessing.
            return Err(CidrError(format!("{s} (host bits set)")));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count
    /// as their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let (a, wa) = to_bits(self.addr);
        let (b, wb) = to_bits(ip);
        wa == wb && (b & mask(wa, self.prefix)) == a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let net: Cidr = "10.2.0.0/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.2.0.0/16");
        assert!(net.contains("10.2.255.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.2.0.9".parse().unwrap()));
        assert!(!net.contains("10.3.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        let host: Cidr = "127.0.0.1/32".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        for bad in ["10.2.0.0", "10.2.0.0/33", "10.2.3.4/16", "x/8", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
