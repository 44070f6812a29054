//! Provider rate limits as the real APIs enforce them: token buckets for requests, input tokens
//! and output tokens per minute, shared by every connection.

use std::time::{Duration, Instant};

/// Per-minute limits like a provider tier grants; 0 in a field leaves that dimension unlimited.
///
/// Each limited dimension is a token bucket holding at most its per-minute limit and refilling
/// continuously at limit/60 per second, so a burst of a whole minute's allowance is accepted at
/// once and then requests trickle in at the sustained rate, as with the real APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per minute.
    pub rpm: u64,
    /// Input tokens per minute, counted with the same estimate the usage reports.
    pub input_tpm: u64,
    /// Output tokens per minute, reserved from `max_tokens` and corrected by the usage reported.
    pub output_tpm: u64,
}

/// Levels are kept in millionths of a token so that even a limit of 1 per minute refills a
/// little on every look, instead of jumping a whole token at a time.
const MICROS: u128 = 1_000_000;

/// A bucket of `limit` per minute gains `limit` micro-tokens every 60,000 ns
/// (60 s / 1,000,000 micro-tokens); refills are counted in nanosecond × limit units over this.
const NANOS_PER_MICRO_AT_ONE_PER_MINUTE: u128 = 60_000;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// One dimension's bucket.
#[derive(Debug, Clone)]
struct Bucket {
    limit: u64,
    /// Micro-tokens available now (as of `updated`).
    level: u128,
    /// Refill not yet worth a whole micro-token, in nanosecond × limit units, so frequent looks
    /// do not each throw away a fraction and starve a slow bucket.
    carry: u128,
    updated: Instant,
}

impl Bucket {
    fn full(limit: u64, now: Instant) -> Bucket {
        Bucket {
            limit,
            level: u128::from(limit) * MICROS,
            carry: 0,
            updated: now,
        }
    }

    fn capacity(&self) -> u128 {
        u128::from(self.limit) * MICROS
    }

    fn refill(&mut self, now: Instant) {
        // A `now` older than the last look (two threads racing to the lock) adds nothing.
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        self.updated = self.updated.max(now);
        let scaled = elapsed
            .saturating_mul(u128::from(self.limit))
            .saturating_add(self.carry);
        self.level = self
            .level
            .saturating_add(scaled / NANOS_PER_MICRO_AT_ONE_PER_MINUTE);
        self.carry = scaled % NANOS_PER_MICRO_AT_ONE_PER_MINUTE;
        if self.level >= self.capacity() {
            self.level = self.capacity();
            self.carry = 0;
        }
    }

    /// What a request asking for `tokens` takes, in micro-tokens: never more than the bucket
    /// holds, so an oversized request waits for a full bucket instead of being refused for ever.
    fn need(&self, tokens: u64) -> u128 {
        u128::from(tokens.min(self.limit)) * MICROS
    }

    /// How long until the bucket holds `need` micro-tokens, given no other use.
    fn wait_for(&self, need: u128) -> Duration {
        let Some(deficit) = need.checked_sub(self.level).filter(|d| *d > 0) else {
            return Duration::ZERO;
        };
        let scaled = deficit
            .saturating_mul(NANOS_PER_MICRO_AT_ONE_PER_MINUTE)
            .saturating_sub(self.carry);
        let nanos = scaled.div_ceil(u128::from(self.limit.max(1)));
        let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
        // Below one second the remainder always fits in u32.
        let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
        Duration::new(secs, sub)
    }

    fn take(&mut self, need: u128) {
        self.level = self.level.saturating_sub(need);
    }

    fn give_back(&mut self, tokens: u64) {
        self.level = self
            .level
            .saturating_add(u128::from(tokens) * MICROS)
            .min(self.capacity());
    }

    /// Whole tokens left, as the remaining-figure headers report them.
    fn remaining(&self) -> u64 {
        u64::try_from(self.level / MICROS).unwrap_or(u64::MAX)
    }
}

/// The buckets for the limited dimensions; `None` where unlimited.
#[derive(Debug, Clone)]
struct Buckets {
    requests: Option<Bucket>,
    input: Option<Bucket>,
    output: Option<Bucket>,
}

impl Buckets {
    fn full(limits: RateLimits, now: Instant) -> Buckets {
        let bucket = |limit: u64| (limit > 0).then(|| Bucket::full(limit, now));
        Buckets {
            requests: bucket(limits.rpm),
            input: bucket(limits.input_tpm),
            output: bucket(limits.output_tpm),
        }
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Bucket> {
        [&mut self.requests, &mut self.input, &mut self.output]
            .into_iter()
            .flatten()
    }

    fn remaining(&self) -> Remaining {
        Remaining {
            requests: self.requests.as_ref().map(Bucket::remaining),
            input_tokens: self.input.as_ref().map(Bucket::remaining),
            output_tokens: self.output.as_ref().map(Bucket::remaining),
        }
    }
}

/// What one request asks of the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Demand {
    pub input_tokens: u64,
    /// The request's output cap (`max_tokens` or `max_completion_tokens`), 0 when it sent none.
    pub max_tokens: u64,
}

/// Whole units left in each limited dimension; `None` for an unlimited one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remaining {
    pub requests: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// An admitted request's hold on the output bucket, to be settled once its usage is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Which limits it was granted under; a grant from before `set` refunds nothing.
    generation: u64,
    /// Output tokens taken on admission (the cap, or the bucket's capacity if smaller).
    output_taken: u64,
}

/// A refusal: the lacking dimensions, for the error message, and the wait the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Whole seconds until every lacking bucket would have enough, at least 1.
    pub retry_after_secs: u64,
    /// The lacking dimensions as "<limit> <unit> per minute", for the error message.
    pub lacking: Vec<String>,
}

/// The answer to "may this request go ahead?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// No limits are set: nothing was taken and nothing is reported.
    Unlimited,
    Granted(Grant),
    Refused(Refusal),
}

/// The limits in force and their buckets, behind one lock in the server so that a check and
/// its debit are one step for all connections.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    buckets: Option<Buckets>,
    /// Bumped by every `set`, so grants made under earlier limits are not refunded into new buckets.
    generation: u64,
}

impl Limiter {
    /// Installs `limits` (or none) with every bucket full.
    pub(crate) fn set(&mut self, limits: Option<RateLimits>, now: Instant) {
        self.generation = self.generation.wrapping_add(1);
        self.buckets = limits.map(|l| Buckets::full(l, now));
    }

    /// Takes one request, its input tokens and its output cap if every limited bucket has
    /// enough; otherwise takes nothing and says how long to wait.
    pub(crate) fn admit(&mut self, demand: Demand, now: Instant) -> Admission {
        let Some(buckets) = self.buckets.as_mut() else {
            return Admission::Unlimited;
        };
        for bucket in buckets.all_mut() {
            bucket.refill(now);
        }
        let asks = [
            (&buckets.requests, 1, "requests"),
            (&buckets.input, demand.input_tokens, "input tokens"),
            (&buckets.output, demand.max_tokens, "output tokens"),
        ];
        let mut wait = Duration::ZERO;
        let mut lacking = Vec::new();
        for (bucket, tokens, unit) in asks {
            let Some(bucket) = bucket else { continue };
            let need = bucket.need(tokens);
            if bucket.level < need {
                wait = wait.max(bucket.wait_for(need));
                lacking.push(format!("{} {unit} per minute", bucket.limit));
            }
        }
        if !lacking.is_empty() {
            let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Admission::Refused(Refusal {
                retry_after_secs: whole.max(1),
                lacking,
            });
        }
        let mut output_taken = 0;
        if let Some(b) = buckets.requests.as_mut() {
            b.take(b.need(1));
        }
        if let Some(b) = buckets.input.as_mut() {
            b.take(b.need(demand.input_tokens));
        }
        if let Some(b) = buckets.output.as_mut() {
            output_taken = demand.max_tokens.min(b.limit);
            b.take(b.need(demand.max_tokens));
        }
        Admission::Granted(Grant {
            generation: self.generation,
            output_taken,
        })
    }

    /// Corrects an admitted request's output reservation to the `output_tokens` its usage
    /// reported, as Anthropic does, and returns what is left for the remaining-figure headers
    /// (`None` if the limits were lifted meanwhile). The bucket is never charged more than was
    /// taken on admission, and never filled above its capacity.
    pub(crate) fn settle(
        &mut self,
        grant: Grant,
        output_tokens: u64,
        now: Instant,
    ) -> Option<Remaining> {
        let buckets = self.buckets.as_mut()?;
        for bucket in buckets.all_mut() {
            bucket.refill(now);
        }
        if grant.generation == self.generation
            && let Some(b) = buckets.output.as_mut()
        {
            b.give_back(grant.output_taken.saturating_sub(output_tokens));
        }
        Some(buckets.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: u64, input_tpm: u64, output_tpm: u64) -> RateLimits {
        RateLimits {
            rpm,
            input_tpm,
            output_tpm,
        }
    }

    fn demand(input_tokens: u64, max_tokens: u64) -> Demand {
        Demand {
            input_tokens,
            max_tokens,
        }
    }

    fn limiter(l: RateLimits, now: Instant) -> Limiter {
        let mut limiter = Limiter::default();
        limiter.set(Some(l), now);
        limiter
    }

    fn granted(a: Admission) -> Grant {
        match a {
            Admission::Granted(g) => g,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn refused(a: Admission) -> Refusal {
        match a {
            Admission::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn no_limits_admit_everything_and_take_nothing() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        assert_eq!(l.admit(demand(1 << 40, 1 << 40), t0), Admission::Unlimited);
        l.set(Some(limits(0, 0, 0)), t0);
        let g = granted(l.admit(demand(1 << 40, 1 << 40), t0));
        assert_eq!(
            l.settle(g, 5, t0),
            Some(Remaining {
                requests: None,
                input_tokens: None,
                output_tokens: None
            })
        );
        l.set(None, t0);
        assert_eq!(l.admit(demand(1, 1), t0), Admission::Unlimited);
        assert_eq!(l.settle(g, 0, t0), None);
    }

    #[test]
    fn the_capacity_plus_first_request_waits_for_the_refill() {
        let t0 = Instant::now();
        let mut l = limiter(limits(3, 0, 0), t0);
        for _ in 0..3 {
            granted(l.admit(demand(10, 10), t0));
        }
        let r = refused(l.admit(demand(10, 10), t0));
        // 3 per minute: one request every 20 s.
        assert_eq!(r.retry_after_secs, 20);
        assert_eq!(r.lacking, ["3 requests per minute"]);
        let r = refused(l.admit(demand(10, 10), t0 + Duration::from_millis(19_500)));
        assert_eq!(r.retry_after_secs, 1, "half a second left rounds up");
        granted(l.admit(demand(10, 10), t0 + Duration::from_secs(20)));
        assert_eq!(
            refused(l.admit(demand(10, 10), t0 + Duration::from_secs(20))).retry_after_secs,
            20
        );
    }

    #[test]
    fn a_refusal_takes_nothing_and_names_every_lacking_bucket() {
        let t0 = Instant::now();
        let mut l = limiter(limits(10, 100, 60), t0);
        let g = granted(l.admit(demand(90, 50), t0));
        assert_eq!(
            l.settle(g, 50, t0),
            Some(Remaining {
                requests: Some(9),
                input_tokens: Some(10),
                output_tokens: Some(10)
            })
        );
        // Input lacks 10 (6 s at 100/min), output lacks 50 (50 s at 60/min): the longer wins.
        let r = refused(l.admit(demand(20, 60), t0));
        assert_eq!(r.retry_after_secs, 50);
        assert_eq!(
            r.lacking,
            ["100 input tokens per minute", "60 output tokens per minute"]
        );
        // The refused request took no request slot.
        let g = granted(l.admit(demand(10, 10), t0));
        assert_eq!(
            l.settle(g, 10, t0).map(|r| r.requests),
            Some(Some(8)),
            "only the two granted requests count"
        );
    }

    #[test]
    fn needs_are_capped_at_capacity() {
        let t0 = Instant::now();
        let mut l = limiter(limits(0, 100, 50), t0);
        let g = granted(l.admit(demand(1_000, 4_096), t0));
        assert_eq!(g.output_taken, 50);
        assert_eq!(
            l.settle(g, 50, t0),
            Some(Remaining {
                requests: None,
                input_tokens: Some(0),
                output_tokens: Some(0)
            })
        );
        // The next oversized request waits for a full bucket: 60 s for either.
        assert_eq!(
            refused(l.admit(demand(1_000, 4_096), t0)).retry_after_secs,
            60
        );
        granted(l.admit(demand(1_000, 4_096), t0 + Duration::from_secs(60)));
    }

    #[test]
    fn output_is_reserved_from_the_cap_and_refunded_to_the_usage() {
        let t0 = Instant::now();
        let mut l = limiter(limits(0, 0, 1_000), t0);
        let g = granted(l.admit(demand(5, 777), t0));
        assert_eq!(g.output_taken, 777);
        // Before settling, another 777 would not fit (223 left).
        assert_eq!(
            refused(l.admit(demand(5, 777), t0)).lacking,
            ["1000 output tokens per minute"]
        );
        let left = l.settle(g, 150, t0).and_then(|r| r.output_tokens);
        assert_eq!(left, Some(850));
        let g = granted(l.admit(demand(5, 777), t0));
        // Reporting more than was reserved charges nothing extra.
        assert_eq!(
            l.settle(g, 5_000, t0).and_then(|r| r.output_tokens),
            Some(73)
        );
        // A refund never fills the bucket above capacity.
        let mut l = limiter(limits(0, 0, 100), t0);
        let g = granted(l.admit(demand(5, 100), t0));
        assert_eq!(
            l.settle(g, 0, t0 + Duration::from_secs(30))
                .and_then(|r| r.output_tokens),
            Some(100)
        );
    }

    #[test]
    fn grants_from_older_limits_are_not_refunded() {
        let t0 = Instant::now();
        let mut l = limiter(limits(0, 0, 100), t0);
        let old = granted(l.admit(demand(1, 100), t0));
        l.set(Some(limits(0, 0, 100)), t0);
        let new = granted(l.admit(demand(1, 60), t0));
        assert_eq!(l.settle(old, 0, t0).and_then(|r| r.output_tokens), Some(40));
        assert_eq!(
            l.settle(new, 10, t0).and_then(|r| r.output_tokens),
            Some(90)
        );
    }

    #[test]
    fn slow_buckets_refill_smoothly_however_often_they_are_looked_at() {
        let t0 = Instant::now();
        // 1 per minute is a micro-token every 60 µs, so no single look 50 µs apart adds one;
        // only the carried remainder makes the token come back after exactly a minute.
        let mut l = limiter(limits(0, 1, 0), t0);
        granted(l.admit(demand(1, 0), t0));
        let step = Duration::from_micros(50);
        let end = t0 + Duration::from_secs(60);
        let mut now = t0;
        let mut looks = 0u32;
        while now + step < end {
            now += step;
            looks += 1;
            if looks.is_multiple_of(100_000) {
                // Too early for a whole token: refused, and told the time actually left.
                let left = end - now;
                let whole = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                assert_eq!(refused(l.admit(demand(1, 0), now)).retry_after_secs, whole);
            } else if let Some(b) = l.buckets.as_mut().and_then(|b| b.input.as_mut()) {
                b.refill(now);
            }
        }
        granted(l.admit(demand(1, 0), end));
    }

    #[test]
    fn fractions_of_a_second_round_up_to_a_whole_retry_after() {
        let t0 = Instant::now();
        // 6,000 per minute = 100 per second: 1 token short is 10 ms, told as 1 s.
        let mut l = limiter(limits(0, 6_000, 0), t0);
        granted(l.admit(demand(6_000, 0), t0));
        assert_eq!(refused(l.admit(demand(1, 0), t0)).retry_after_secs, 1);
        granted(l.admit(demand(1, 0), t0 + Duration::from_millis(10)));
        // 250 short is 2.5 s, told as 3.
        assert_eq!(
            refused(l.admit(demand(250, 0), t0 + Duration::from_millis(10))).retry_after_secs,
            3
        );
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        let t0 = Instant::now();
        let mut l = limiter(limits(u64::MAX, u64::MAX, u64::MAX), t0);
        let g = granted(l.admit(demand(u64::MAX, u64::MAX), t0));
        let later = t0 + Duration::from_secs(3_600);
        let left = l.settle(g, 0, later);
        assert_eq!(
            left,
            Some(Remaining {
                requests: Some(u64::MAX),
                input_tokens: Some(u64::MAX),
                output_tokens: Some(u64::MAX)
            })
        );
    }
}
