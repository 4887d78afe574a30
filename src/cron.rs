//! Recurring calls: standard 5-field cron evaluated in an IANA time zone (croner + chrono-tz).
//! Pure: no pgrx.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Longest cron text accepted (a real expression is a few dozen characters).
const MAX_CRON_LEN: usize = 256;

pub fn parse(expr: &str) -> Result<Cron, String> {
    let trimmed = expr.trim();
    if trimmed.is_empty() || trimmed.len() > MAX_CRON_LEN {
        return Err(format!("cron expression must be 1 to {MAX_CRON_LEN} characters"));
    }
    let fields = trimmed.split_whitespace().count();
    if fields != 5 && !trimmed.starts_with('@') {
        return Err(format!(
            "cron expression \"{trimmed}\" has {fields} fields; use the standard 5: minute hour day-of-month month day-of-week"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| format!("invalid cron expression \"{trimmed}\": {e}"))
}

pub fn zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| format!("unknown time zone \"{name}\"; use an IANA name such as 'America/New_York'"))
}

/// The first occurrence strictly after `after`, evaluated in `tz`.
pub fn next_after(expr: &str, tz_name: &str, after: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let cron = parse(expr)?;
    let tz = zone(tz_name)?;
    let local = tz.from_utc_datetime(&after.naive_utc());
    cron.find_next_occurrence(&local, false)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("cron expression \"{expr}\" has no next occurrence: {e}"))
}

pub fn next_after_epoch(expr: &str, tz_name: &str, after_epoch_secs: f64) -> Result<f64, String> {
    if !after_epoch_secs.is_finite() {
        return Err("time is not finite".into());
    }
    let after = DateTime::<Utc>::from_timestamp_micros((after_epoch_secs * 1e6) as i64).ok_or_else(|| "time out of range".to_string())?;
    let next = next_after(expr, tz_name, after)?;
    Ok(next.timestamp_micros() as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn daily_nine_follows_new_york_across_dst() {
        // 2026-03-08: US clocks spring forward. 09:00 EST = 14:00Z before, 09:00 EDT = 13:00Z after.
        let a = next_after("0 9 * * *", "America/New_York", utc("2026-03-07T15:00:00Z")).unwrap();
        assert_eq!(a, utc("2026-03-08T13:00:00Z"));
        let b = next_after("0 9 * * *", "America/New_York", utc("2026-03-06T15:00:00Z")).unwrap();
        assert_eq!(b, utc("2026-03-07T14:00:00Z"));
        // 2026-11-01: fall back.
        let c = next_after("0 9 * * *", "America/New_York", utc("2026-10-31T14:00:00Z")).unwrap();
        assert_eq!(c, utc("2026-11-01T14:00:00Z"));
    }

    #[test]
    fn every_thirty_minutes_and_mondays() {
        let a = next_after("*/30 * * * *", "UTC", utc("2026-01-01T10:05:00Z")).unwrap();
        assert_eq!(a, utc("2026-01-01T10:30:00Z"));
        let b = next_after("0 9 * * 1", "UTC", utc("2026-01-01T00:00:00Z")).unwrap(); // a Thursday
        assert_eq!(b, utc("2026-01-05T09:00:00Z"));
    }

    #[test]
    fn strictly_after() {
        let a = next_after("0 * * * *", "UTC", utc("2026-01-01T10:00:00Z")).unwrap();
        assert_eq!(a, utc("2026-01-01T11:00:00Z"));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(parse("0 9 * *").unwrap_err().contains("4 fields"));
        assert!(parse("0 0 9 * * *").unwrap_err().contains("6 fields"));
        assert!(parse("61 * * * *").is_err());
        assert!(parse("").is_err());
        assert!(parse(&"1".repeat(1000)).is_err());
        assert!(zone("Mars/Olympus").unwrap_err().contains("unknown time zone"));
        assert!(next_after_epoch("* * * * *", "UTC", f64::NAN).is_err());
    }
}
