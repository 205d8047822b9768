//! Time: every rule that involves time reads it from a [`Clock`], so tests can run months of
//! simulated time in milliseconds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

/// One minute in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

impl Timestamp {
    /// Unix milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Unix seconds, rounded down.
    pub fn seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This instant plus `days` days (saturating).
    pub fn plus_days(self, days: i64) -> Self {
        Self(self.0.saturating_add(days.saturating_mul(DAY_MS)))
    }

    /// This instant plus `minutes` minutes (saturating).
    pub fn plus_minutes(self, minutes: i64) -> Self {
        Self(self.0.saturating_add(minutes.saturating_mul(MINUTE_MS)))
    }

    /// Midnight UTC of a calendar date, or `None` if the date does not exist.
    pub fn from_ymd(y: i64, m: u32, d: u32) -> Option<Self> {
        if !(1..=12).contains(&m) || d == 0 {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let yy = if m <= 2 { y - 1 } else { y };
        let era = yy.div_euclid(400);
        let yoe = yy.rem_euclid(400);
        let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        // Reject dates like 2026-02-30 by converting back.
        (civil_from_days(days) == (y, m, d)).then(|| Self(days * DAY_MS))
    }

    /// Parses `YYYY-MM-DD` as midnight UTC.
    pub fn parse_date(s: &str) -> Option<Self> {
        let mut it = s.trim().splitn(3, '-');
        let y = it.next()?.parse().ok()?;
        let m = it.next()?.parse().ok()?;
        let d = it.next()?.parse().ok()?;
        Self::from_ymd(y, m, d)
    }

    /// Formats as RFC 3339 UTC (`2026-11-24T02:22:12Z`).
    pub fn to_rfc3339(self) -> String {
        let secs = self.seconds();
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
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

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            // A wall clock before 1970 is a misconfigured machine; treat it as the epoch.
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(start.0)))
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by `days` days.
    pub fn advance_days(&self, days: i64) {
        self.advance_ms(days * DAY_MS);
    }

    /// Sets the clock.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// A wall clock that never goes back while the process runs (X5): between readings it moves
/// with the monotonic clock, so a wall clock set back neither repeats nor delays what a timer
/// scheduled; a wall clock set forward is followed (the vendor's side of the doubt: periods
/// run out by it until a host answers).
#[derive(Debug)]
pub struct SteadyClock<C> {
    wall: C,
    last: std::sync::Mutex<Option<(Timestamp, std::time::Instant)>>,
}

impl<C: Clock> SteadyClock<C> {
    /// Follows `wall`.
    pub fn new(wall: C) -> Self {
        Self {
            wall,
            last: std::sync::Mutex::new(None),
        }
    }
}

impl<C: Clock> Clock for SteadyClock<C> {
    fn now(&self) -> Timestamp {
        let wall = self.wall.now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = match *last {
            Some((t, at)) => {
                let ran = i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX);
                wall.max(Timestamp(t.0.saturating_add(ran)))
            }
            None => wall,
        };
        *last = Some((now, std::time::Instant::now()));
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // X5: a wall clock set back does not move the steady clock back; one set forward does.
    #[test]
    fn x5_steady_clock_never_goes_back() {
        let wall = ManualClock::new(Timestamp(10 * DAY_MS));
        let steady = SteadyClock::new(wall.clone());
        let first = steady.now();
        wall.set(Timestamp(DAY_MS));
        assert!(steady.now() >= first, "set back: not followed");
        wall.set(Timestamp(20 * DAY_MS));
        assert_eq!(
            steady.now(),
            Timestamp(20 * DAY_MS),
            "set forward: followed"
        );
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(1_795_487_332_000).to_rfc3339(),
            "2026-11-24T02:28:52Z"
        );
        assert_eq!(
            Timestamp(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn dates_parse_and_invalid_ones_are_refused() {
        assert_eq!(
            Timestamp::parse_date("2026-11-24").map(|t| t.to_rfc3339()),
            Some("2026-11-24T00:00:00Z".into())
        );
        assert_eq!(Timestamp::parse_date("1970-01-01"), Some(Timestamp(0)));
        assert_eq!(
            Timestamp::parse_date("2024-02-29").map(|t| t.to_rfc3339()),
            Some("2024-02-29T00:00:00Z".into())
        );
        assert_eq!(Timestamp::parse_date("2026-02-30"), None);
        assert_eq!(Timestamp::parse_date("2026-13-01"), None);
        assert_eq!(Timestamp::parse_date("yesterday"), None);
    }

    #[test]
    fn manual_clock_is_shared_between_clones() {
        let a = ManualClock::new(Timestamp(5));
        let b = a.clone();
        a.advance_days(2);
        assert_eq!(b.now(), Timestamp(5 + 2 * DAY_MS));
    }
}
