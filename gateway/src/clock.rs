//! Time as edgecar writes it: Unix milliseconds (queues, presence, expiry) and RFC 3339 text in
//! UTC (CloudEvents, the devices API, the registry), in one place and without a date library.

use std::time::SystemTime;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as RFC 3339 in UTC (`2024-05-01T12:00:00Z`).
pub fn rfc3339(unix_secs: u64) -> String {
    let mut out = Vec::with_capacity(RFC3339_LEN);
    write_rfc3339(&mut out, unix_secs);
    String::from_utf8(out).unwrap_or_default()
}

/// Length of [`rfc3339`]'s text for years 0 to 9999.
const RFC3339_LEN: usize = 20;

/// Appends [`rfc3339`]'s text to `out` without allocating (CloudEvents stamp every event).
/// Years past 9999 are written with more digits.
pub fn write_rfc3339(out: &mut Vec<u8>, unix_secs: u64) {
    let secs = i64::try_from(unix_secs).unwrap_or(i64::MAX / 2);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let digits = |out: &mut Vec<u8>, v: i64, width: usize| {
        let mut buf = [b'0'; 20];
        let mut i = buf.len();
        let mut v = v.unsigned_abs();
        while v > 0 || buf.len() - i < width {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[i..]);
    };
    digits(out, y, 4);
    out.push(b'-');
    digits(out, i64::from(m), 2);
    out.push(b'-');
    digits(out, i64::from(d), 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, rem % 3600 / 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    out.push(b'Z');
}

/// Parses RFC 3339 (`Z` or `±hh:mm`, optional fraction) to Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i128;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let ms = format!("{frac:0<3}");
        millis = ms.get(..3)?.parse().ok()?;
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    Some(i128::from(secs) * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_reads_offsets() {
        for secs in [0u64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let s = rfc3339(secs);
            assert_eq!(parse_rfc3339_ms(&s), Some(i128::from(secs) * 1000), "{s}");
        }
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T02:00:00.5+02:00"),
            Some(951_782_400_500)
        );
        assert_eq!(parse_rfc3339_ms("2000-02-29"), None);
    }

    #[test]
    fn writing_matches_formatting_for_every_field_width() {
        for secs in [
            0u64,
            59,
            3_599,
            86_399,
            951_782_400,
            1_700_000_000,
            253_402_300_799,
        ] {
            let mut out = b"x".to_vec();
            write_rfc3339(&mut out, secs);
            assert_eq!(&out[1..], rfc3339(secs).as_bytes());
        }
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
