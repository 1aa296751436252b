//! Rule `stale_reactivated`: an identity that had been issued nothing for
//! `stale_after` (stale, as `identity list --stale` shows it) suddenly
//! issued again — a forgotten workload's credentials in new hands.

/// Judges one issuance; no state of its own (the registry keeps the
/// identity's last issuance).
#[derive(Debug, Clone, Copy)]
pub struct StaleReactivated {
    after: i64,
}

impl StaleReactivated {
    /// Stale after `after` seconds without issuance; 0 turns it off.
    pub fn new(after: i64) -> Self {
        Self { after }
    }

    /// An issuance at `now` to an identity whose previous issuance (or
    /// creation, if never issued) was at `previous`.
    pub fn issued(&self, previous: i64, now: i64) -> Option<String> {
        (self.after > 0 && now - previous >= self.after).then(|| {
            format!(
                "issued again after {} without issuance (stale after {})",
                crate::model::format_duration(std::time::Duration::from_secs(
                    u64::try_from(now - previous).unwrap_or(0)
                )),
                crate::model::format_duration(std::time::Duration::from_secs(self.after as u64))
            )
        })
    }
}
