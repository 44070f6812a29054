//! How long a ticket waits after its LLM call failed: exponential, capped, with a per-ticket spread so tickets do not retry in lockstep.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
