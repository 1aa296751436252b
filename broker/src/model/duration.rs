//! Durations as operators write them (`90s`, `5m`, `1h`, `100d`), and
//! times as RFC 3339.
//!
//! humantime prints `100d` as `3months 8days 4h 48m` (its months are 30.44
//! days), which no one wrote and no one can check at a glance; so the
//! broker prints a duration in the largest unit that divides it exactly,
//! and config keys holding durations say which key was wrong and what
//! forms are accepted.

use std::fmt;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{Error, Visitor};

/// The forms a duration may be written in, for error messages.
pub const DURATION_FORMS: &str = "a number and a unit, e.g. \"90s\", \"5m\", \"1h\", \"30d\" (units s, m, h, d; \"1h 30m\" also works)";

/// `d` in the largest of d, h, m, s that divides it exactly: `100d`, `36h`,
/// `24h`, `90m`, `3700s` (days from two days on); sub-second durations as
/// milliseconds.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    // Days from two on: a day is more often written `24h` than `1d`.
    for (unit, size, from) in [("d", 86_400, 2 * 86_400), ("h", 3_600, 1), ("m", 60, 1)] {
        if secs >= from && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Unix seconds as RFC 3339 UTC (`2026-12-05T04:23:02Z`): the one way the
/// broker writes a time for people, audit details included.
pub fn rfc3339(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Parses `text` as a duration, or says what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}): write {DURATION_FORMS}"))
}

/// Deserializes a duration string for config key `key`, naming the key and
/// the accepted forms when the value is not one.
pub fn deserialize_duration<'de, D: Deserializer<'de>>(
    d: D,
    key: &'static str,
) -> Result<Duration, D::Error> {
    struct Expect(&'static str);
    impl Visitor<'_> for Expect {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}: a duration string: {DURATION_FORMS}", self.0)
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(|why| E::custom(format!("{}: {why}", self.0)))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "{}: {v} has no unit: write {DURATION_FORMS}, in quotes",
                self.0
            )))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_i64(v.min(i64::MAX as u64) as i64)
        }
    }
    d.deserialize_any(Expect(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_durations_as_written() {
        let days = |n: u64| Duration::from_secs(n * 86_400);
        assert_eq!(format_duration(days(100)), "100d");
        assert_eq!(format_duration(days(1825)), "1825d");
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(format_duration(Duration::from_secs(24 * 3600)), "24h");
        assert_eq!(format_duration(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(format_duration(Duration::from_secs(3700)), "3700s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        for text in ["100d", "36h", "24h", "90m", "45s", "7d", "5m", "1h"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(rfc3339(1_893_456_000), "2030-01-01T00:00:00Z");
        let err = parse_duration("5x").unwrap_err();
        assert!(err.contains("\"5x\"") && err.contains("30d"), "{err}");
    }
}
