//! Sizes and durations as pulsar-admin writes them: `10G`, `512M`, `3h`, `2d`.
//!
//! The rules are pulsar-admin's (`validateSizeString`, `RelativeTimeUtil`): a
//! size is bytes unless suffixed `k`/`m`/`g`/`t` (powers of 1024); a duration
//! is seconds unless suffixed `s`/`m`/`h`/`d`/`w`/`y` (`m` is minutes). Suffixes
//! are case-insensitive. Where a policy allows "unlimited", `-1` means it and no
//! other negative number is accepted. Every function here is a clap
//! `value_parser`: the error is the message clap shows.

const BYTES_PER_MB: u64 = 1024 * 1024;
const SECONDS_PER_MINUTE: u64 = 60;

/// `4096`, `10K`, `10M`, `16G`, `3T` → bytes.
pub fn parse_size_bytes(s: &str) -> Result<u64, String> {
    let (number, unit) = split_unit(s);
    let multiplier: u64 = match unit.map(|c| c.to_ascii_lowercase()) {
        None => 1,
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some('t') => 1 << 40,
        Some(_) => return Err(format!("invalid size {s:?}: the unit must be K, M, G or T")),
    };
    parse_count(number, s, "size")?
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `30`, `30s`, `10m`, `3h`, `2d`, `5w`, `1y` → seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let (number, unit) = split_unit(s);
    let multiplier: u64 = match unit.map(|c| c.to_ascii_lowercase()) {
        None | Some('s') => 1,
        Some('m') => 60,
        Some('h') => 60 * 60,
        Some('d') => 24 * 60 * 60,
        Some('w') => 7 * 24 * 60 * 60,
        Some('y') => 365 * 24 * 60 * 60,
        Some(_) => {
            return Err(format!(
                "invalid duration {s:?}: the unit must be s, m, h, d, w or y"
            ))
        }
    };
    parse_count(number, s, "duration")?
        .checked_mul(multiplier)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Retention size: a size in whole megabytes (rounded down, as pulsar-admin
/// does), or `-1` for unlimited.
pub fn parse_retention_size_mb(s: &str) -> Result<i64, String> {
    unlimited_or(s, |s| parse_size_bytes(s).map(|b| b / BYTES_PER_MB))
}

/// Retention time: a duration in whole minutes (rounded down), or `-1` for
/// unlimited.
pub fn parse_retention_time_minutes(s: &str) -> Result<i64, String> {
    unlimited_or(s, |s| {
        parse_duration_secs(s).map(|secs| secs / SECONDS_PER_MINUTE)
    })
}

/// A size in bytes, or `-1` for "no limit" (backlog quota `--limit`).
pub fn parse_size_limit_bytes(s: &str) -> Result<i64, String> {
    unlimited_or(s, parse_size_bytes)
}

/// A duration in seconds, or `-1` for "no limit" (backlog quota `--limitTime`).
pub fn parse_time_limit_secs(s: &str) -> Result<i64, String> {
    unlimited_or(s, parse_duration_secs)
}

/// A non-negative duration in seconds that fits the `int` Pulsar's REST API
/// stores (message TTL, inactive-topic duration).
pub fn parse_duration_secs_i32(s: &str) -> Result<i32, String> {
    let secs = parse_duration_secs(s)?;
    i32::try_from(secs).map_err(|_| format!("duration {s:?} is too large"))
}

/// A duration in milliseconds (delayed delivery's tick time), written in
/// seconds or with a unit as pulsar-admin's `TimeUnitToMillisConverter`
/// takes it: `1s` is 1000.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    parse_duration_secs(s)?
        .checked_mul(1000)
        .and_then(|ms| i64::try_from(ms).ok())
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// A size in bytes, or any negative number (offload thresholds: -1 is the
/// broker's default, other negatives "never").
pub fn parse_size_or_negative(s: &str) -> Result<i64, String> {
    negative_or(s, parse_size_bytes)
}

/// A duration in seconds, or any negative number (as for
/// [`parse_size_or_negative`]).
pub fn parse_duration_secs_or_negative(s: &str) -> Result<i64, String> {
    negative_or(s, parse_duration_secs)
}

fn negative_or(s: &str, parse: impl Fn(&str) -> Result<u64, String>) -> Result<i64, String> {
    if let Some(digits) = s.trim().strip_prefix('-') {
        return match digits.parse::<i64>() {
            Ok(n) if n > 0 => Ok(-n),
            _ => Err(format!(
                "invalid value {s:?}: a negative value is a whole number such as -1"
            )),
        };
    }
    let value = parse(s)?;
    i64::try_from(value).map_err(|_| format!("{s:?} is too large"))
}

/// A non-negative size in bytes that fits an `int` (max message size).
pub fn parse_size_bytes_i32(s: &str) -> Result<i32, String> {
    let bytes = parse_size_bytes(s)?;
    i32::try_from(bytes).map_err(|_| format!("size {s:?} is too large (at most 2G - 1 bytes)"))
}

fn unlimited_or(s: &str, parse: impl Fn(&str) -> Result<u64, String>) -> Result<i64, String> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let value = parse(s)?;
    i64::try_from(value).map_err(|_| format!("{s:?} is too large"))
}

/// Splits a trailing alphabetic unit from the number before it.
fn split_unit(s: &str) -> (&str, Option<char>) {
    let s = s.trim();
    match s.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => (&s[..s.len() - c.len_utf8()], Some(c)),
        _ => (s, None),
    }
}

fn parse_count(number: &str, whole: &str, what: &str) -> Result<u64, String> {
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid {what} {whole:?}: expected a non-negative whole number with an optional unit"
        ));
    }
    number
        .parse()
        .map_err(|_| format!("{what} {whole:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_without_a_unit_are_bytes_and_units_are_powers_of_1024() {
        assert_eq!(parse_size_bytes("4096"), Ok(4096));
        assert_eq!(parse_size_bytes("10k"), Ok(10 * 1024));
        assert_eq!(parse_size_bytes("10K"), Ok(10 * 1024));
        assert_eq!(parse_size_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_size_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_size_bytes("3T"), Ok(3 << 40));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        for bad in ["", "G", "10X", "1.5G", "-5M", "ten", "10 G"] {
            assert!(parse_size_bytes(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_size_bytes("99999999999999999999").is_err());
        assert!(parse_size_bytes("16777216T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn durations_without_a_unit_are_seconds_and_m_is_minutes() {
        assert_eq!(parse_duration_secs("120"), Ok(120));
        assert_eq!(parse_duration_secs("45s"), Ok(45));
        assert_eq!(parse_duration_secs("10m"), Ok(600));
        assert_eq!(parse_duration_secs("3h"), Ok(3 * 3600));
        assert_eq!(parse_duration_secs("3H"), Ok(3 * 3600));
        assert_eq!(parse_duration_secs("2d"), Ok(2 * 86400));
        assert_eq!(parse_duration_secs("5w"), Ok(5 * 7 * 86400));
        assert_eq!(parse_duration_secs("1y"), Ok(365 * 86400));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in ["", "h", "3x", "-5", "1.5h", "3 h"] {
            assert!(
                parse_duration_secs(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn retention_converts_to_megabytes_and_minutes() {
        assert_eq!(parse_retention_size_mb("10G"), Ok(10240));
        assert_eq!(parse_retention_size_mb("512M"), Ok(512));
        assert_eq!(
            parse_retention_size_mb("100K"),
            Ok(0),
            "under 1 MB rounds down to 0"
        );
        assert_eq!(parse_retention_size_mb("-1"), Ok(-1));
        assert_eq!(parse_retention_time_minutes("3h"), Ok(180));
        assert_eq!(parse_retention_time_minutes("2d"), Ok(2880));
        assert_eq!(
            parse_retention_time_minutes("90"),
            Ok(1),
            "90 s rounds down to 1 min"
        );
        assert_eq!(parse_retention_time_minutes("-1"), Ok(-1));
    }

    #[test]
    fn only_minus_one_is_accepted_as_a_negative_limit() {
        assert_eq!(parse_size_limit_bytes("-1"), Ok(-1));
        assert_eq!(parse_size_limit_bytes("10G"), Ok(10 << 30));
        assert_eq!(parse_time_limit_secs("-1"), Ok(-1));
        assert_eq!(parse_time_limit_secs("1h"), Ok(3600));
        assert!(parse_size_limit_bytes("-2").is_err());
        assert!(parse_retention_time_minutes("-10m").is_err());
    }

    #[test]
    fn milliseconds_are_seconds_times_1000() {
        assert_eq!(parse_duration_ms("1s"), Ok(1000));
        assert_eq!(parse_duration_ms("10"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert!(parse_duration_ms("-1").is_err());
        assert!(parse_duration_ms("99999999999999999y").is_err());
    }

    #[test]
    fn int_sizes_take_units_and_refuse_what_an_int_cannot_hold() {
        assert_eq!(parse_size_bytes_i32("5242880"), Ok(5 << 20));
        assert_eq!(parse_size_bytes_i32("5M"), Ok(5 << 20));
        assert_eq!(parse_size_bytes_i32("0"), Ok(0));
        assert!(parse_size_bytes_i32("2G").is_err());
        assert!(parse_size_bytes_i32("-1").is_err());
    }

    #[test]
    fn int_durations_refuse_negatives_and_overflow() {
        assert_eq!(parse_duration_secs_i32("3600"), Ok(3600));
        assert_eq!(parse_duration_secs_i32("1h"), Ok(3600));
        assert!(parse_duration_secs_i32("-5").is_err());
        assert!(parse_duration_secs_i32("100y").is_err());
    }
}
