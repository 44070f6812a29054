//! Claims are leases: how often a live holder renews one so it never drifts into the stale window.

use std::time::Duration;

/// Longest gap between two heartbeats of a claim, whatever the stale window.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(10);

/// How often a live claim renews its lease: a third of the stale window, at most `MAX_HEARTBEAT`.
pub fn heartbeat_interval(stale_claim_minutes: i32) -> Duration {
    let minutes = u64::try_from(stale_claim_minutes.max(1)).unwrap_or(1);
    Duration::from_secs(minutes * 20).min(MAX_HEARTBEAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_well_inside_the_window() {
        for minutes in [1, 5, 30, 10_080] {
            let every = heartbeat_interval(minutes);
            assert!(
                every * 3 <= Duration::from_secs(minutes as u64 * 60),
                "{minutes}: {every:?}"
            );
            assert!(every <= MAX_HEARTBEAT);
        }
        // Nonsense windows still give a sane interval.
        assert_eq!(heartbeat_interval(0), heartbeat_interval(1));
        assert_eq!(heartbeat_interval(-5), heartbeat_interval(1));
    }
}
