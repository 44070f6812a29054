//! Claims are leases: how often a live holder renews one so it never drifts into the stale window.

use std::time::Duration;

/// Whether `heartbeat_seconds` renews a claim before a window of `stale_claim_minutes` makes it stale; the
/// error says why not. Both settings are checked with it when either is set.
pub fn check_heartbeat(heartbeat_seconds: i32, stale_claim_minutes: i32) -> Result<(), String> {
    let window = i64::from(stale_claim_minutes) * 60;
    if i64::from(heartbeat_seconds) < window {
        Ok(())
    } else {
        Err(format!(
            "damascus.heartbeat_seconds ({heartbeat_seconds}) must be below the stale window, damascus.stale_claim_minutes ({stale_claim_minutes} min = {window} s), or live claims would go stale between heartbeats"
        ))
    }
}

/// How often a live claim renews its lease.
pub fn heartbeat_interval(heartbeat_seconds: i32) -> Duration {
    Duration::from_secs(u64::try_from(heartbeat_seconds.max(1)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_must_come_before_the_window_ends() {
        assert_eq!(check_heartbeat(30, 30), Ok(()));
        assert_eq!(check_heartbeat(59, 1), Ok(()));
        let e = check_heartbeat(60, 1).unwrap_err();
        assert!(e.contains("must be below the stale window"), "{e}");
        assert!(check_heartbeat(3600, 30).is_err());
    }

    #[test]
    fn the_interval_is_the_setting() {
        assert_eq!(heartbeat_interval(30), Duration::from_secs(30));
        assert_eq!(heartbeat_interval(0), Duration::from_secs(1));
    }
}
