//! The units a user types: byte counts (`64K`, `1M`) and durations (`30`, `0.5`, `250ms`,
//! `5m`, `1h 30m`), each range-checked when parsed so that no value can overflow later.

use std::time::Duration;

/// A byte count that fits a frame's 32-bit length field (see [`parse_bytes_u64`]).
pub fn parse_bytes(s: &str) -> Result<u32, String> {
    let n = parse_bytes_u64(s)?;
    u32::try_from(n).map_err(|_| format!("'{s}' is more than {} bytes", u32::MAX))
}

/// `1048576`, `64K`, `1M`, `1.5G`, `64KiB`, `10 MB`: K, M and G are powers of 1024, whatever
/// the spelling, as for memory limits elsewhere (ulimit, systemd's MemoryMax=). Parsed by the
/// parse-size crate.
pub fn parse_bytes_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("'{s}' is not a byte count: give 0 or more bytes"));
    }
    // A fraction of a byte would be rounded without a word: fractions need a unit (1.5K).
    if t.contains('.') && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("'{s}' is not a whole number of bytes"));
    }
    parse_size::Config::new()
        .with_binary()
        .parse_size(t)
        .map_err(|e| match e {
            parse_size::Error::PosOverflow => format!("'{s}' is too many bytes"),
            _ => format!("'{s}' is not a byte count (bytes, or with K, M or G: 64K, 10M, 1G)"),
        })
}

/// The longest duration any setting takes: 365 days. Longer values are refused when parsed,
/// so no deadline computed from one can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest duration other than 0 (which turns a limit off): 1 ms, the resolution of
/// forkd's timers.
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// The largest `--max-frame`: 1 GiB.
pub const MAX_FRAME: u32 = 1 << 30;

/// A duration: seconds, whole or fractional (`10`, `0.5`), or with units (`250ms`, `30s`,
/// `5m`, `1h 30m`, `2days`). 0 is allowed (the setting then turns its limit off);
/// otherwise from 1 ms to 365 days.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let not_a_duration = || format!("'{s}' is not a duration: give 0 or more seconds");
    if t.starts_with('-') {
        return Err(not_a_duration());
    }
    let parsed = match t.parse::<f64>() {
        Ok(secs) if !secs.is_finite() => return Err(not_a_duration()),
        Ok(secs) if secs > MAX_DURATION.as_secs_f64() => return Err(format!("'{s}' {TOO_LONG}")),
        // Judged before converting: a few picoseconds would round to 0, and a number that
        // parses to 0 while naming another digit underflowed (1e-400); either would be "off".
        Ok(secs) if secs < MIN_DURATION.as_secs_f64() && (secs > 0.0 || names_nonzero(t)) => {
            return Err(format!("'{s}' {TOO_SHORT}"));
        }
        Ok(secs) => Duration::from_secs_f64(secs),
        Err(_) => humantime::parse_duration(t).map_err(|_| {
            format!("'{s}' is not a duration: give seconds (30, 0.5) or units (250ms, 5m, 1h)")
        })?,
    };
    check_duration(parsed).map_err(|why| format!("'{s}' {why}"))?;
    Ok(parsed)
}

/// Whether the mantissa of a number names a digit other than 0.
fn names_nonzero(number: &str) -> bool {
    let mantissa = number.split(['e', 'E']).next().unwrap_or("");
    mantissa.contains(|c: char| ('1'..='9').contains(&c))
}

const TOO_LONG: &str = "is longer than 365 days, the longest duration forkd takes";
const TOO_SHORT: &str = "is shorter than 1 ms, the shortest duration forkd takes";

/// The range rule of every duration, for values given in code as well as typed: 0, or from
/// [`MIN_DURATION`] to [`MAX_DURATION`].
pub fn check_duration(d: Duration) -> Result<(), &'static str> {
    if d > MAX_DURATION {
        Err(TOO_LONG)
    } else if !d.is_zero() && d < MIN_DURATION {
        Err(TOO_SHORT)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("64K"), Ok(65536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("3g"), Ok(3 << 30));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("10 MB"), Ok(10 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert!(parse_bytes("4G").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("0.5").unwrap_err().contains("whole number"));
        assert_eq!(parse_bytes("1.5K"), Ok(1536));
        assert!(
            parse_bytes("12 parsecs")
                .unwrap_err()
                .contains("not a byte count")
        );
        assert!(
            parse_bytes_u64("99999999999T")
                .unwrap_err()
                .contains("too many")
        );
    }

    #[test]
    fn durations_in_seconds_or_units_within_one_range() {
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        assert_eq!(parse_secs("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_secs("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_secs("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_secs("365days"), Ok(MAX_DURATION));
        for bad in [
            "1e19", "inf", "NaN", "-1", "-0", "366d", "31536001", "0.0001", "1e-10", "1e-400",
            "500us", "x", "",
        ] {
            assert!(parse_secs(bad).is_err(), "{bad} was taken");
        }
        assert!(parse_secs("1e19").unwrap_err().contains("365 days"));
        assert!(parse_secs("0.0001").unwrap_err().contains("1 ms"));
        assert!(parse_secs("1e-400").unwrap_err().contains("1 ms"));
        assert_eq!(parse_secs("0e5"), Ok(Duration::ZERO));
    }
}
