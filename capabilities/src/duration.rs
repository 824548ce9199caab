//! Go-style durations (`500ms`, `1m30s`, `1.5h`), the spelling Dapr's YAML files use.
//!
//! Parsing follows Go's `time.ParseDuration` (units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, decimal
//! fractions, the bare `0`), except that negative durations are refused: nothing in a manifest or a
//! Resiliency policy means "minus five seconds". Formatting produces the same spelling back, so a
//! status page shows what the operator wrote.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty (or only whitespace).
    #[error("empty duration")]
    Empty,
    /// The string started with `-`.
    #[error("duration must not be negative")]
    Negative,
    /// A number had no unit after it, like `5` (Go requires one, except for `0`).
    #[error("missing unit in duration {0:?} (write e.g. \"5s\", \"500ms\", \"1m30s\")")]
    MissingUnit(String),
    /// A unit that Go does not know, like `5sec`.
    #[error("unknown unit {unit:?} in duration {input:?} (units: ns, us, ms, s, m, h)")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// Anything else that is not a number followed by a unit.
    #[error("invalid duration {0:?} (write e.g. \"5s\", \"500ms\", \"1m30s\")")]
    Invalid(String),
    /// The value does not fit in 64-bit nanoseconds (about 292 years), as in Go.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a Go-style duration such as `5s`, `500ms`, `1m30s`, `1.5h` or `0`.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let s = match s.strip_prefix('+') {
        Some(rest) => rest,
        None if s.starts_with('-') => return Err(DurationError::Negative),
        None => s,
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid(input.to_owned());
    let overflow = || DurationError::Overflow(input.to_owned());
    let mut total: u128 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(DurationError::MissingUnit(input.to_owned())),
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                    input: input.to_owned(),
                });
            }
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            // More than 30 digits cannot fit in 64-bit nanoseconds anyway; refusing early keeps
            // the u128 arithmetic below from overflowing.
            if int_part.len() > 30 {
                return Err(overflow());
            }
            int_part.parse().map_err(|_| invalid())?
        };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
        // Fractions below a nanosecond are dropped, as Go does.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes().take(20) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        if total > u128::from(u64::MAX >> 1) {
            return Err(overflow());
        }
    }
    let total = u64::try_from(total).map_err(|_| overflow())?;
    Ok(Duration::from_nanos(total))
}

/// Formats a duration the way Go prints one: `1h2m3.5s`, `1m30s`, `500ms`, `1.5µs`, `0s`.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(nanos, div));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let sec_nanos = nanos % 60_000_000_000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", decimal(sec_nanos, 1_000_000_000)));
    out
}

/// serde `serialize_with` helper: a duration as its Go spelling (`"1m30s"`).
pub(crate) fn ser_go<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_go_duration(*d))
}

/// serde `serialize_with` helper for optional durations (`None` becomes null).
pub(crate) fn ser_go_opt<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_go_duration(*d)),
        None => s.serialize_none(),
    }
}

/// `value / div` as a decimal without trailing zeros.
fn decimal(value: u128, div: u128) -> String {
    let whole = value / div;
    let frac = value % div;
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_spellings() {
        let cases = [
            ("0", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("1.5h", Duration::from_secs(5400)),
            ("2h45m0.5s", Duration::from_millis(9_900_500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            (".5s", Duration::from_millis(500)),
            ("+3s", Duration::from_secs(3)),
            (" 15m ", Duration::from_secs(900)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_go_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_bad_spellings() {
        assert_eq!(parse_go_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_go_duration("-5s"), Err(DurationError::Negative));
        assert!(matches!(
            parse_go_duration("5"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_go_duration("5sec"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_go_duration("s"),
            Err(DurationError::Invalid(_))
        ));
        assert!(parse_go_duration("1.s.5").is_err());
        assert!(matches!(
            parse_go_duration("999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_nanos(1500)), "1.5µs");
        for s in ["5s", "1m30s", "250ms", "2h45m0.5s"] {
            let d = parse_go_duration(s).unwrap();
            assert_eq!(parse_go_duration(&format_go_duration(d)), Ok(d));
        }
    }
}
