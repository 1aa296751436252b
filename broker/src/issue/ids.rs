//! Identifiers of issued credentials (JWT `jti`, certificate serials):
//! unguessable, and ordered by time.
//!
//! Each starts with the issuance time in milliseconds and ends in at least
//! 72 bits from the system CSPRNG (CA/Browser Forum baseline: 64). The
//! time prefix is what keeps issuance cheap: the audit log indexes every
//! `jti` and serial, and fully random keys land on a random index page
//! each, so every credential dirtied a page of its own in each commit; keys
//! of the same moment share the few pages at the index's newest end.

use ring::rand::{SecureRandom, SystemRandom};

use crate::keys::KeyError;

/// 16 bytes: the unix time in milliseconds (48 bits, big-endian), then 80
/// random bits.
pub fn time_ordered_id(now_ms: i64) -> Result<[u8; 16], KeyError> {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    SystemRandom::new()
        .fill(&mut id[6..])
        .map_err(|_| KeyError::Random)?;
    Ok(id)
}

/// A positive 16-byte serial: a first byte of `0x40` (never zero, so its
/// hex form is the same however a parser trims leading zeros, and never
/// negative), the unix time in milliseconds (48 bits), then 72 random bits.
pub fn time_ordered_serial(now_ms: i64) -> Result<[u8; 16], KeyError> {
    let mut serial = [0u8; 16];
    serial[0] = 0x40;
    serial[1..7].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    SystemRandom::new()
        .fill(&mut serial[7..])
        .map_err(|_| KeyError::Random)?;
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_one_moment_share_their_prefix_and_differ_after_it() {
        let at: i64 = 1_765_000_000_123;
        let (a, b) = (time_ordered_id(at).unwrap(), time_ordered_id(at).unwrap());
        assert_eq!(a[..6], b[..6]);
        assert_ne!(a[6..], b[6..], "80 random bits each");
        assert!(time_ordered_id(at + 1).unwrap()[..6] > a[..6]);
        let (s, t) = (
            time_ordered_serial(at).unwrap(),
            time_ordered_serial(at).unwrap(),
        );
        assert_eq!(s[0], 0x40, "positive, no leading zero byte");
        assert_eq!(s[..7], t[..7]);
        assert_ne!(s[7..], t[7..], "72 random bits each");
        // Upper-case hex, as recorded, sorts by time.
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
        assert!(hex(&time_ordered_serial(at + 1).unwrap()) > hex(&s));
    }
}
