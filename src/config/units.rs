//! Human-friendly units (`15s`, `64KiB`, `600/minute`).
//!
//! They live apart from the config schema because the CLI (`--ttl`) and `streamguard check`
//! must accept and print exactly the spellings the config file does; one parser per unit keeps
//! them from drifting.

use std::time::Duration;

use super::types::RateSpec;

/// A value that does not parse as the unit it is meant to be. Each message ends with accepted
/// examples, because the fix for a bad unit is almost always "write it like this".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "invalid duration {input:?}: {reason}; write a number with a unit, \
         e.g. \"250ms\", \"15s\", \"10m\", \"1h30m\" or \"0s\""
    )]
    Duration { input: String, reason: String },
    #[error(
        "invalid size {input:?}: {reason}; write bytes with an optional unit, \
         e.g. \"512\", \"64KiB\", \"1MiB\" or \"1MB\" (KB = 1000 bytes, KiB = 1024 bytes)"
    )]
    Size { input: String, reason: String },
    #[error(
        "invalid rate {input:?}: {reason}; write count/period, \
         e.g. \"20/second\", \"600/minute\", \"50/hour\" or \"1000/day\""
    )]
    Rate { input: String, reason: String },
}

/// Parses a duration such as `250ms`, `15s`, `1h30m` or `0s` (humantime syntax).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(input.trim()).map_err(|e| UnitError::Duration {
        input: input.to_owned(),
        reason: e.to_string(),
    })
}

/// Formats a duration so that [`parse_duration`] reads it back unchanged (`1h 30m`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Size units, largest first so [`format_size`] picks the most compact exact spelling.
/// Binary units come before decimal ones because buffer limits are usually powers of two.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses a byte size: `512`, `512B`, `64KiB`, `1MiB`, `1MB` (unit letters are case-insensitive).
pub fn parse_size(input: &str) -> Result<usize, UnitError> {
    let fail = |reason: String| UnitError::Size {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(fail("it does not start with a whole number".into()));
    }
    let unit = unit.trim();
    let multiplier = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|(_, multiplier)| *multiplier)
            .ok_or_else(|| fail(format!("unknown unit {unit:?}")))?
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| fail("it is too large".into()))
}

/// Formats a byte count with the largest unit that divides it exactly (`1048576` -> `1MiB`).
pub fn format_size(bytes: usize) -> String {
    let bytes = bytes as u64;
    SIZE_UNITS
        .iter()
        .find(|(_, multiplier)| bytes != 0 && bytes.is_multiple_of(*multiplier))
        .map_or_else(
            || format!("{bytes}B"),
            |(name, multiplier)| format!("{}{name}", bytes / multiplier),
        )
}

/// Named rate periods: the canonical name first (used when formatting), then accepted aliases.
const RATE_PERIODS: &[(&[&str], u64)] = &[
    (&["second", "sec", "s"], 1),
    (&["minute", "min", "m"], 60),
    (&["hour", "hr", "h"], 3_600),
    (&["day", "d"], 86_400),
];

/// Parses `N/period` where period is `second`, `minute`, `hour`, `day` (or a duration such as
/// `30s`, so any [`RateSpec`] can be written back by [`format_rate`]).
pub fn parse_rate(input: &str) -> Result<RateSpec, UnitError> {
    let fail = |reason: String| UnitError::Rate {
        input: input.to_owned(),
        reason,
    };
    let (count, period) = input
        .trim()
        .split_once('/')
        .ok_or_else(|| fail("there is no \"/\" between the count and the period".into()))?;
    let count = count
        .trim()
        .parse::<u32>()
        .map_err(|_| fail(format!("{:?} is not a whole number", count.trim())))?;
    if count == 0 {
        // A zero rate would refuse everything; "unlimited" is spelled by leaving the key out.
        return Err(fail(
            "a count of 0 allows nothing; remove the key for no limit".into(),
        ));
    }
    let period = period.trim();
    let per = match RATE_PERIODS
        .iter()
        .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(period)))
    {
        Some((_, secs)) => Duration::from_secs(*secs),
        None => humantime::parse_duration(period)
            .map_err(|_| fail(format!("unknown period {period:?}")))?,
    };
    if per.is_zero() {
        return Err(fail("the period must be longer than zero".into()));
    }
    Ok(RateSpec { count, per })
}

/// Formats a rate so that [`parse_rate`] reads it back unchanged (`600/minute`).
pub fn format_rate(rate: RateSpec) -> String {
    let named = RATE_PERIODS
        .iter()
        .find(|(_, secs)| Duration::from_secs(*secs) == rate.per)
        .and_then(|(names, _)| names.first());
    match named {
        Some(name) => format!("{}/{name}", rate.count),
        None => format!(
            "{}/{}",
            rate.count,
            format_duration(rate.per).replace(' ', "")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("15s", Some(15_000)),
            ("10m", Some(600_000)),
            ("1h30m", Some(5_400_000)),
            ("250ms", Some(250)),
            ("0s", Some(0)),
            (" 2s ", Some(2_000)),
            ("", None),
            ("fast", None),
            ("10x", None),
        ];
        for (input, want) in cases {
            let got = parse_duration(input).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, *want, "{input:?}");
        }
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<usize>)] = &[
            ("512", Some(512)),
            ("512B", Some(512)),
            ("64KiB", Some(65_536)),
            ("1MiB", Some(1_048_576)),
            ("1MB", Some(1_000_000)),
            ("1 kb", Some(1_000)),
            ("2GiB", Some(2 << 30)),
            ("1.5MiB", None),
            ("MiB", None),
            ("12 parsecs", None),
            ("99999999999999999999", None),
            ("18446744073709551615GiB", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).ok(), *want, "{input:?}");
        }
    }

    #[test]
    fn rates() {
        let cases: &[(&str, Option<(u32, u64)>)] = &[
            ("600/minute", Some((600, 60))),
            ("50/hour", Some((50, 3_600))),
            ("20/second", Some((20, 1))),
            ("3/minute", Some((3, 60))),
            ("100/day", Some((100, 86_400))),
            ("5/30s", Some((5, 30))),
            ("0/minute", None),
            ("10 per minute", None),
            ("ten/minute", None),
            ("10/fortnight", None),
            ("10/0s", None),
        ];
        for (input, want) in cases {
            let got = parse_rate(input).ok().map(|r| (r.count, r.per.as_secs()));
            assert_eq!(got, *want, "{input:?}");
        }
    }

    #[test]
    fn errors_show_examples_and_the_input() {
        let cases = [
            parse_duration("5 parsecs").map(|_| ()),
            parse_size("lots").map(|_| ()),
            parse_rate("many").map(|_| ()),
        ];
        for (err, (input, example)) in cases.into_iter().zip([
            ("5 parsecs", "\"15s\""),
            ("lots", "\"64KiB\""),
            ("many", "\"600/minute\""),
        ]) {
            let message = err.expect_err("bad unit must fail").to_string();
            assert!(message.contains(input), "{message}");
            assert!(message.contains(example), "{message}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for bytes in [
            0,
            1,
            512,
            1_000,
            65_536,
            1_048_576,
            1_500_000,
            3 << 30,
            1_234_567,
        ] {
            assert_eq!(parse_size(&format_size(bytes)).ok(), Some(bytes), "{bytes}");
        }
        assert_eq!(format_size(1_048_576), "1MiB");
        assert_eq!(format_size(2_000), "2KB");
        for millis in [0, 250, 15_000, 5_400_250] {
            let d = Duration::from_millis(millis);
            assert_eq!(
                parse_duration(&format_duration(d)).ok(),
                Some(d),
                "{millis}"
            );
        }
        for (count, secs) in [(600, 60), (1, 1), (7, 86_400), (5, 90)] {
            let rate = RateSpec {
                count,
                per: Duration::from_secs(secs),
            };
            assert_eq!(
                parse_rate(&format_rate(rate)).ok(),
                Some(rate),
                "{count}/{secs}"
            );
        }
        assert_eq!(
            format_rate(RateSpec {
                count: 600,
                per: Duration::from_secs(60)
            }),
            "600/minute"
        );
    }
}
