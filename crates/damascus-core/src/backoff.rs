//! How long to wait before trying an LLM call again: within a cycle (short, honouring `retry-after`) and, once those retries are spent, per ticket (exponential, capped, spread so tickets do not retry in lockstep).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First retry delay.
pub const BASE: Duration = Duration::from_secs(10);
/// No retry waits longer than this (before spread).
pub const CAP: Duration = Duration::from_secs(600);

/// Delay before retrying a ticket whose call just failed, given how many failures came before this one.
pub fn llm_error_delay(ticket_id: i64, previous_failures: u32) -> Duration {
    let exp = previous_failures.min(16);
    let raw = BASE
        .as_secs()
        .saturating_mul(1u64 << exp)
        .min(CAP.as_secs());
    // Up to +20%, fixed for a (ticket, failure) pair so the outcome is reproducible.
    let spread_range = raw / 5 + 1;
    let mix = (ticket_id as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(previous_failures).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    Duration::from_secs(raw + (mix >> 33) % spread_range)
}

/// First retry of a call within its cycle; each further retry waits twice as long.
pub const RETRY_BASE: Duration = Duration::from_millis(250);

/// Delay before in-call retry number `retry` (0 for the first): exponential from `RETRY_BASE` with up to
/// ±20% jitter drawn from `seed`, and never shorter than what the server asked for with `retry-after`.
pub fn in_call_retry_delay(retry: u32, seed: u64, retry_after: Option<Duration>) -> Duration {
    let raw = RETRY_BASE.saturating_mul(1u32 << retry.min(10));
    let mix = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(retry);
    // A factor between 0.8 and 1.2.
    let permille = 800 + (mix >> 40) % 401;
    let jittered = raw.mul_f64(permille as f64 / 1000.0);
    retry_after.map_or(jittered, |r| r.max(jittered))
}

/// The wait a `retry-after` header asks for: whole seconds, or an HTTP date (IMF-fixdate, e.g.
/// `Wed, 21 Oct 2015 07:28:00 GMT`) measured from `now`. None when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the epoch of an IMF-fixdate, the only date format HTTP/1.1 senders may generate.
fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|n| n.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || year < 1970
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm, years from March).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_call_retries_grow_jitter_and_honour_retry_after() {
        for retry in 0..4 {
            let raw = RETRY_BASE * (1 << retry);
            for seed in [0u64, 1, 99, u64::MAX] {
                let d = in_call_retry_delay(retry, seed, None);
                assert!(
                    d >= raw.mul_f64(0.8) && d <= raw.mul_f64(1.2),
                    "{retry} {seed}: {d:?}"
                );
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..50)
            .map(|seed| in_call_retry_delay(2, seed, None))
            .collect();
        assert!(spread.len() > 10, "jitter spreads callers apart");
        assert_eq!(
            in_call_retry_delay(0, 7, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        // A retry-after shorter than the backoff does not shorten it.
        assert!(in_call_retry_delay(3, 7, Some(Duration::ZERO)) >= RETRY_BASE * 6);
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 2015-10-21 07:27:50 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        // A date in the past means now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "Wed, 21 Oct 2015 07:28:00 PST",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn grows_then_caps() {
        let d: Vec<u64> = (0..10).map(|n| llm_error_delay(7, n).as_secs()).collect();
        for (n, secs) in d.iter().enumerate() {
            let raw = (10u64 << n).min(600);
            assert!(*secs >= raw && *secs <= raw + raw / 5, "n={n} secs={secs}");
        }
        assert!(d[1] > d[0] && d[3] > d[2]);
        assert!(d.iter().all(|s| *s <= 720));
    }

    #[test]
    fn spreads_tickets_apart() {
        let delays: std::collections::HashSet<u64> =
            (1..50).map(|id| llm_error_delay(id, 5).as_secs()).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        assert!(llm_error_delay(i64::MAX, u32::MAX) <= CAP + CAP / 5);
    }
}
