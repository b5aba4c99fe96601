//! Schedules: days of the week and a time of day window, in the gate's time zone.

use std::time::SystemTime;

use jiff::tz::TimeZone;

use super::config::{DAYS, ScheduleEntry};

/// Minutes since midnight from "HH:MM" (24:00 allowed as the end of the day).
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// Days (Monday = 0) and a [from, to) window of minutes; `to < from` crosses midnight (the part
/// after midnight belongs to the day the window started on).
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub days: [bool; 7],
    pub from: u32,
    pub to: u32,
}

impl Window {
    pub fn from_entry(e: &ScheduleEntry) -> Option<Self> {
        let mut days = [e.days.is_empty(); 7];
        for d in &e.days {
            days[DAYS.iter().position(|x| x == d)?] = true;
        }
        Some(Self { days, from: parse_hhmm(&e.from)?, to: parse_hhmm(&e.to)? })
    }

    /// Whether `t` falls in the window, in time zone `tz`.
    pub fn contains(&self, t: SystemTime, tz: &TimeZone) -> bool {
        let Ok(ts) = jiff::Timestamp::try_from(t) else { return false };
        let local = ts.to_zoned(tz.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u32 * 60 + local.minute() as u32;
        if self.from <= self.to {
            self.days[day] && (self.from..self.to).contains(&minute)
        } else {
            // Crosses midnight: the evening of a listed day, or the early hours after one.
            (self.days[day] && minute >= self.from) || (self.days[(day + 6) % 7] && minute < self.to)
        }
    }
}

/// The gate's time zone: the configured IANA name, else the system's (UTC when unknown).
pub fn time_zone(name: Option<&str>) -> TimeZone {
    match name {
        Some(n) => TimeZone::get(n).unwrap_or(TimeZone::UTC),
        None => TimeZone::try_system().unwrap_or(TimeZone::UTC),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(days: &[&str], from: &str, to: &str) -> Window {
        Window::from_entry(&ScheduleEntry { group: Some("g".into()), person: None, days: days.iter().map(|d| d.to_string()).collect(), from: from.into(), to: to.into() }).unwrap()
    }

    fn at(s: &str) -> SystemTime {
        SystemTime::from(s.parse::<jiff::Timestamp>().unwrap())
    }

    #[test]
    fn hours_parse_and_reject() {
        assert_eq!(parse_hhmm("08:30"), Some(510));
        assert_eq!(parse_hhmm("24:00"), Some(1440));
        for bad in ["8:30", "24:01", "12:60", "ab:cd", "1200"] {
            assert_eq!(parse_hhmm(bad), None, "{bad}");
        }
    }

    #[test]
    fn windows_in_a_time_zone() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let w = entry(&["mon", "tue", "wed", "thu", "fri"], "08:00", "18:00");
        // 2026-12-02 is a Wednesday; Berlin is UTC+1 in winter.
        assert!(w.contains(at("2026-12-02T07:30:00Z"), &berlin), "08:30 in Berlin");
        assert!(!w.contains(at("2026-12-02T06:30:00Z"), &berlin), "07:30 in Berlin");
        assert!(!w.contains(at("2026-12-02T17:00:00Z"), &berlin), "18:00 is the end, not inside");
        assert!(!w.contains(at("2026-12-05T10:00:00Z"), &berlin), "a Saturday");
        assert!(w.contains(at("2026-12-02T07:30:00Z"), &berlin));
        assert!(!w.contains(at("2026-12-02T07:30:00Z"), &TimeZone::get("America/New_York").unwrap()), "02:30 in New York");
    }

    #[test]
    fn a_night_shift_crosses_midnight() {
        let utc = TimeZone::UTC;
        let w = entry(&["fri"], "22:00", "06:00");
        assert!(w.contains(at("2026-12-04T23:00:00Z"), &utc), "Friday 23:00");
        assert!(w.contains(at("2026-12-05T05:59:00Z"), &utc), "Saturday 05:59 belongs to Friday's shift");
        assert!(!w.contains(at("2026-12-05T22:30:00Z"), &utc), "Saturday evening");
        assert!(!w.contains(at("2026-12-04T05:00:00Z"), &utc), "Friday early hours belong to Thursday");
    }
}
