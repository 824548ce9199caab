//! `bindings.cron`: an input binding that fires on a schedule.
//!
//! Schedules are Dapr's: a cron expression with optional seconds (`0 30 * * * *`, `*/5 * * * *`),
//! a descriptor (`@hourly`, `@daily`, ...), or `@every <duration>` (`@every 15s`). Times are UTC.

use std::time::Duration;

use chrono::Utc;
use croner::Cron;

use crate::config::units::parse_duration;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// `@every <duration>`.
    Every(Duration),
    /// A cron expression or descriptor.
    Cron(Box<Cron>),
}

impl Schedule {
    /// Parses Dapr's `schedule` metadata.
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if let Some(d) = s.strip_prefix("@every") {
            let d = parse_duration(d.trim()).map_err(|e| format!("schedule {s:?}: {e}"))?;
            if d < Duration::from_millis(100) {
                return Err(format!("schedule {s:?}: @every must be at least 100ms"));
            }
            return Ok(Schedule::Every(d));
        }
        Cron::new(s)
            .with_seconds_optional()
            .parse()
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| format!("schedule {s:?} is not a cron expression: {e}"))
    }

    /// How long from now until the next firing (`None` if the schedule never fires again).
    pub fn until_next(&self) -> Option<Duration> {
        match self {
            Schedule::Every(d) => Some(*d),
            Schedule::Cron(c) => {
                let now = Utc::now();
                let next = c.find_next_occurrence(&now, false).ok()?;
                (next - now).to_std().ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_schedules_parse() {
        assert!(
            matches!(Schedule::parse("@every 15s"), Ok(Schedule::Every(d)) if d == Duration::from_secs(15))
        );
        assert!(
            Schedule::parse("*/5 * * * * *")
                .unwrap()
                .until_next()
                .unwrap()
                <= Duration::from_secs(5)
        );
        assert!(Schedule::parse("0 30 3 * * *").is_ok());
        assert!(
            Schedule::parse("*/10 * * * *").is_ok(),
            "five fields: seconds optional"
        );
        assert!(Schedule::parse("@hourly").is_ok());
        assert!(Schedule::parse("every day").is_err());
        assert!(Schedule::parse("@every soon").is_err());
    }
}
