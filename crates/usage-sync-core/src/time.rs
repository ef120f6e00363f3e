//! Wall-clock timestamps as plain integers, and the calendar arithmetic the
//! period rules need.
//!
//! The core never reads a clock: every operation that depends on time takes
//! a `now: Timestamp` argument. This keeps the core deterministic, lets the
//! engine inject a clock that follows paused tokio time in tests, and avoids a
//! date-time dependency for what is a handful of integer formulas.

use std::fmt;

use crate::error::CoreError;

/// Milliseconds since the Unix epoch, UTC.
///
/// An `i64` of milliseconds covers ±292 million years, so arithmetic on it
/// never overflows for any time the service will see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

pub const MS_PER_DAY: i64 = 86_400_000;

impl Timestamp {
    /// The earliest representable instant; used as the start of the single
    /// period of a `none` plan.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// Used as the end of a period that never ends.
    pub const FAR_FUTURE: Timestamp = Timestamp(i64::MAX);

    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }

    pub fn saturating_add_ms(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    pub fn saturating_sub_ms(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_sub(ms))
    }

    /// Milliseconds elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> i64 {
        (self.0 - earlier.0).max(0)
    }

    /// Start of the UTC day containing `self`.
    pub fn start_of_day(self) -> Timestamp {
        Timestamp(self.0.div_euclid(MS_PER_DAY) * MS_PER_DAY)
    }

    /// Start of the UTC calendar month containing `self`.
    pub fn start_of_month(self) -> Timestamp {
        let days = self.0.div_euclid(MS_PER_DAY);
        let (y, m, _) = civil_from_days(days);
        Timestamp(days_from_civil(y, m, 1) * MS_PER_DAY)
    }

    /// Start of the UTC calendar month after the one containing `self`.
    pub fn start_of_next_month(self) -> Timestamp {
        let days = self.0.div_euclid(MS_PER_DAY);
        let (y, m, _) = civil_from_days(days);
        let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        Timestamp(days_from_civil(y, m, 1) * MS_PER_DAY)
    }

    /// RFC 3339 in UTC with millisecond precision, e.g.
    /// `2026-11-01T00:00:00.000Z`. Fixed width for years 0..=9999, so the
    /// text sorts like the instant (the SQLite schema relies on this).
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    /// The text of [`Timestamp::to_rfc3339`] as fixed-width ASCII, for
    /// years 0..=9999 (`None` outside them). Written digit by digit into
    /// an array: this runs once per answered consume (the period start),
    /// and `write!` with padding was 15 % of the server's CPU under batch
    /// ingest; an array also spares the response writers an allocation.
    pub fn rfc3339_bytes(self) -> Option<[u8; 24]> {
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        if !(0..=9999).contains(&y) {
            return None;
        }
        let secs = ms_of_day / 1000;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m as i64);
        put(8, 2, d as i64);
        put(11, 2, secs / 3600);
        put(14, 2, (secs / 60) % 60);
        put(17, 2, secs % 60);
        put(20, 3, ms_of_day % 1000);
        Some(b)
    }

    /// Parses the format produced by [`Timestamp::to_rfc3339`], and also
    /// accepts no fraction or 1–9 fraction digits, and a `+00:00` offset.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, CoreError> {
        let bad = || CoreError::InvalidTimestamp(s.to_owned());
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') {
            return Err(bad());
        }
        if b[13] != b':' || b[16] != b':' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, CoreError> {
            let t = s.get(r).ok_or_else(bad)?;
            if !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<i64>().map_err(|_| bad())
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        let mut rest = &s[19..];
        let mut millis = 0i64;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return Err(bad());
            }
            let mut scaled = frac[..digits.min(3)].parse::<i64>().map_err(|_| bad())?;
            for _ in digits..3 {
                scaled *= 10;
            }
            millis = scaled;
            rest = &frac[digits..];
        }
        if rest != "Z" && rest != "z" && rest != "+00:00" {
            return Err(bad());
        }
        // Month and day were checked to 1..=12 and 1..=31 above.
        let (mo, d) = (
            u32::try_from(mo).map_err(|_| bad())?,
            u32::try_from(d).map_err(|_| bad())?,
        );
        let days = days_from_civil(y, mo, d);
        Ok(Timestamp(
            days * MS_PER_DAY + ((h * 60 + mi) * 60 + se) * 1000 + millis,
        ))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = self.rfc3339_bytes() {
            // Only ASCII digits were written into an ASCII template.
            return f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?);
        }
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            y,
            m,
            d,
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            ms_of_day % 1000
        )
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
/// Howard Hinnant's `days_from_civil`, exact for every i64 year in range.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Day of month 1..=31 and month 1..=12 by construction of the
    // algorithm (H. Hinnant's civil_from_days).
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("a day of month");
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("a month");
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_and_parses_known_instants() {
        let t = Timestamp::parse_rfc3339("2026-11-27T07:24:49.123Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-27T07:24:49.123Z");
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(0).rfc3339_bytes().as_ref(),
            Some(b"1970-01-01T00:00:00.000Z")
        );
        // Outside years 0..=9999 there is no fixed-width text; Display
        // still writes one.
        let far = Timestamp::parse_rfc3339("9999-12-31T23:59:59.999Z").unwrap();
        assert!(far.rfc3339_bytes().is_some());
        let beyond = Timestamp(far.0 + 1);
        assert_eq!(beyond.rfc3339_bytes(), None);
        assert_eq!(beyond.to_rfc3339(), "10000-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2024-02-29T23:59:59+00:00")
                .unwrap()
                .to_rfc3339(),
            "2024-02-29T23:59:59.000Z"
        );
        assert!(Timestamp::parse_rfc3339("2024-13-01T00:00:00Z").is_err());
        assert!(Timestamp::parse_rfc3339("2024-01-01 00:00:00Z").is_err());
        assert!(Timestamp::parse_rfc3339("2024-01-01T00:00:00+01:00").is_err());
    }

    #[test]
    fn month_boundaries_handle_leap_years_and_december() {
        let t = Timestamp::parse_rfc3339("2024-02-29T12:00:00Z").unwrap();
        assert_eq!(t.start_of_month().to_rfc3339(), "2024-02-01T00:00:00.000Z");
        assert_eq!(
            t.start_of_next_month().to_rfc3339(),
            "2024-03-01T00:00:00.000Z"
        );
        let dec = Timestamp::parse_rfc3339("2026-12-31T23:59:59.999Z").unwrap();
        assert_eq!(
            dec.start_of_next_month().to_rfc3339(),
            "2027-01-01T00:00:00.000Z"
        );
        assert_eq!(dec.start_of_day().to_rfc3339(), "2026-12-31T00:00:00.000Z");
    }

    proptest! {
        #[test]
        fn rfc3339_round_trips(ms in -30_000_000_000_000i64..200_000_000_000_000i64) {
            let t = Timestamp(ms);
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        }

        #[test]
        fn month_start_contains_instant(ms in 0i64..200_000_000_000_000i64) {
            let t = Timestamp(ms);
            prop_assert!(t.start_of_month() <= t);
            prop_assert!(t < t.start_of_next_month());
            prop_assert_eq!(t.start_of_next_month().start_of_month(), t.start_of_next_month());
        }

        #[test]
        fn civil_round_trips(days in -1_000_000i64..1_000_000i64) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    proptest! {
        /// The hand-written digits agree with `format!` over years 0..=9999.
        #[test]
        fn fast_format_matches_padded_format(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let days = ms.div_euclid(MS_PER_DAY);
            let ms_of_day = ms.rem_euclid(MS_PER_DAY);
            let (y, m, d) = civil_from_days(days);
            let secs = ms_of_day / 1000;
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                y, m, d, secs / 3600, (secs / 60) % 60, secs % 60, ms_of_day % 1000
            );
            prop_assert_eq!(Timestamp(ms).to_rfc3339(), expected);
        }
    }
}
