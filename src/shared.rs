//! Shared memory of the cluster's damascus processes: the static workers' slots (pid, cycles done), a work
//! counter that wakes idle workers when a transaction that made a ticket claimable commits, and the LLM
//! provider's gate (rate-limit buckets, a cooldown after a 429, parked after a spend-limit refusal).
//!
//! Only there when damascus is in `shared_preload_libraries` (shared memory is sized at server start); without
//! it every function here is a no-op or answers nothing, and workers find work by `damascus.naptime` alone.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use damascus_core::llm::{Admission, ProviderGate};

use pgrx::prelude::*;
use pgrx::{PGRXSharedMemory, PgAtomic, pg_shmem_init, pg_sys};

/// Static workers (`damascus.workers` is at most this).
pub const MAX_WORKERS: usize = 64;

/// One static worker's slot; pid 0 when none runs in it.
pub struct StaticWorker {
    pid: AtomicI32,
    cycles_done: AtomicU64,
}

pub struct Shared {
    /// Bumped after every commit that may have made a ticket claimable; a worker that sees it change looks
    /// for work at once instead of sleeping out its naptime.
    work_seq: AtomicU64,
    workers: [StaticWorker; MAX_WORKERS],
    provider: Provider,
}

/// The provider's state, shared by every worker and tick (and their HTTP threads, which touch only these
/// atomics). Shared memory rather than a row: it is read before every request, from threads that cannot run
/// SQL, and losing it in a restart costs at most one more 429.
#[derive(Default)]
struct Provider {
    /// Taken around the buckets (held for a few instructions; a process killed holding it restarts the
    /// cluster, which clears shared memory).
    lock: AtomicBool,
    /// Microseconds since the epoch of the last refill; 0 before the first request.
    refilled_us: AtomicU64,
    /// Tokens available per dimension (requests, input, output), in millionths, and the capacity they were
    /// filled for (a changed limit starts its bucket full).
    available: [AtomicI64; 3],
    capacity: [AtomicU64; 3],
    /// Milliseconds since the epoch before which nothing is sent (a 429's retry-after).
    cooldown_until_ms: AtomicU64,
    parked: AtomicBool,
}

// SAFETY: only atomics, valid when zeroed, and never a pointer; every process maps the same bytes.
unsafe impl PGRXSharedMemory for Shared {}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            work_seq: AtomicU64::new(0),
            workers: std::array::from_fn(|_| StaticWorker {
                pid: AtomicI32::new(0),
                cycles_done: AtomicU64::new(0),
            }),
            provider: Provider::default(),
        }
    }
}

// SAFETY: the name is damascus's own; no other shared memory segment uses it.
static SHARED: PgAtomic<Shared> = unsafe { PgAtomic::new(c"damascus shared state") };

/// Whether this process has SHARED mapped (the library was preloaded).
static MAPPED: AtomicBool = AtomicBool::new(false);

/// Requests the segment; only while shared_preload_libraries is processed. Children forked by the postmaster
/// inherit the mapping and this flag.
// pgrx's macro tests for the features of every Postgres version it supports; this crate has pg15 only.
#[allow(unexpected_cfgs)]
pub fn init_preloaded() {
    pg_shmem_init!(SHARED);
    MAPPED.store(true, Ordering::Relaxed);
}

fn shared() -> Option<&'static Shared> {
    MAPPED.load(Ordering::Relaxed).then(|| SHARED.get())
}

/// The current work counter (0 without shared memory).
pub fn work_seq() -> u64 {
    shared().map_or(0, |s| s.work_seq.load(Ordering::Acquire))
}

/// Takes static worker `n`'s slot (1-based) for this process.
pub fn register_worker(n: usize, pid: i32) {
    if let Some(slot) = shared().and_then(|s| s.workers.get(n.wrapping_sub(1))) {
        slot.cycles_done.store(0, Ordering::Relaxed);
        slot.pid.store(pid, Ordering::Release);
    }
}

/// Gives static worker `n`'s slot back (a worker killed with -9 leaves its pid; waking it is harmless, and its
/// successor takes the slot over).
pub fn unregister_worker(n: usize) {
    if let Some(slot) = shared().and_then(|s| s.workers.get(n.wrapping_sub(1))) {
        slot.pid.store(0, Ordering::Release);
    }
}

/// Counts a finished cycle of static worker `n`.
pub fn count_cycle(n: usize) {
    if let Some(slot) = shared().and_then(|s| s.workers.get(n.wrapping_sub(1))) {
        slot.cycles_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// (pid, cycles done) of every running static worker.
pub fn workers() -> Vec<(i32, i64)> {
    shared().map_or_else(Vec::new, |s| {
        s.workers
            .iter()
            .filter_map(|w| {
                let pid = w.pid.load(Ordering::Acquire);
                (pid != 0).then(|| (pid, w.cycles_done.load(Ordering::Relaxed) as i64))
            })
            .collect()
    })
}

/// Set by the tickets trigger; read and cleared when the transaction ends.
static WAKE_AT_COMMIT: AtomicBool = AtomicBool::new(false);
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Asks for the workers to be woken when the current transaction commits (nothing happens if it aborts, and
/// a worker woken earlier would not see the uncommitted row).
pub fn wake_at_commit() {
    if shared().is_none() {
        return;
    }
    WAKE_AT_COMMIT.store(true, Ordering::Relaxed);
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: main thread of a backend; the callback stays registered for the life of the process and is a
        // plain function with no argument.
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    let commit = event == pg_sys::XactEvent::XACT_EVENT_COMMIT;
    let ended = commit
        || event == pg_sys::XactEvent::XACT_EVENT_ABORT
        || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
        || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT;
    if ended && WAKE_AT_COMMIT.swap(false, Ordering::Relaxed) && commit {
        wake_workers();
    }
}

/// Bumps the work counter and sets every static worker's latch. Runs after the commit is visible, so a
/// woken worker's claim sees the ticket.
fn wake_workers() {
    let Some(s) = shared() else { return };
    s.work_seq.fetch_add(1, Ordering::AcqRel);
    // SAFETY: MyProcPid is set before any extension code runs and never changes.
    let me = unsafe { pg_sys::MyProcPid };
    for w in &s.workers {
        let pid = w.pid.load(Ordering::Acquire);
        // A worker's own verdict already makes it look for work; waking itself would only add a loop turn.
        if pid == 0 || pid == me {
            continue;
        }
        // SAFETY: main thread; BackendPidGetProc takes ProcArrayLock itself and returns NULL for a pid that
        // is gone; SetLatch on a live PGPROC's latch is how Postgres wakes another process.
        unsafe {
            let proc = pg_sys::BackendPidGetProc(pid);
            if !proc.is_null() {
                pg_sys::SetLatch(&raw mut (*proc).procLatch);
            }
        }
    }
}

const MICRO: i64 = 1_000_000;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Provider {
    fn with_buckets<R>(&self, limits: [u64; 3], f: impl FnOnce(&mut [i64; 3], [i64; 3]) -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let now = now_us();
        let last = self.refilled_us.swap(now, Ordering::Relaxed);
        let elapsed = i64::try_from(now.saturating_sub(last)).unwrap_or(i64::MAX);
        let mut avail = [0i64; 3];
        let mut caps = [0i64; 3];
        for d in 0..3 {
            let cap = i64::try_from(limits[d])
                .unwrap_or(i64::MAX / MICRO)
                .saturating_mul(MICRO);
            caps[d] = cap;
            let was = self.capacity[d].swap(limits[d], Ordering::Relaxed);
            avail[d] = if last == 0 || was != limits[d] {
                cap
            } else {
                // A bucket refills its capacity once a minute, continuously.
                let refill = elapsed.saturating_mul(i64::try_from(limits[d]).unwrap_or(0)) / 60;
                self.available[d]
                    .load(Ordering::Relaxed)
                    .saturating_add(refill)
                    .min(cap)
            };
        }
        let r = f(&mut avail, caps);
        for (slot, a) in self.available.iter().zip(avail) {
            slot.store(a, Ordering::Relaxed);
        }
        self.lock.store(false, Ordering::Release);
        r
    }
}

/// The provider's gate with the limits one context read from the settings.
pub struct Gate {
    limits: [u64; 3],
}

/// The share of each configured limit damascus uses. Its buckets and the provider's run on different clocks,
/// and a request is counted here a network latency before the provider counts it; a bucket 5% smaller and
/// slower keeps those differences from ever putting a request over the provider's limit.
const LIMIT_SHARE_PERCENT: u64 = 95;

impl Gate {
    pub fn new(limits: [u64; 3]) -> Gate {
        Gate {
            limits: limits.map(|l| {
                if l == 0 {
                    0
                } else {
                    (l.saturating_mul(LIMIT_SHARE_PERCENT) / 100).max(1)
                }
            }),
        }
    }

    /// After an answer: the provider counts the real tokens, so give back what the estimate took beyond them
    /// (or take what it missed). `input` is what counts toward the input limit.
    pub fn settle(&self, estimated: (u64, u64), actual: (u64, u64)) {
        let Some(s) = shared() else { return };
        if self.limits == [0; 3] {
            return;
        }
        s.provider.with_buckets(self.limits, |avail, caps| {
            for (d, (est, real)) in [(1, (estimated.0, actual.0)), (2, (estimated.1, actual.1))] {
                if caps[d] > 0 {
                    let delta = (i64::try_from(est).unwrap_or(0)
                        - i64::try_from(real).unwrap_or(0))
                    .saturating_mul(MICRO);
                    avail[d] = avail[d].saturating_add(delta).min(caps[d]);
                }
            }
        });
    }
}

impl ProviderGate for Gate {
    fn admit(&self, input_tokens: u64, output_tokens: u64) -> Admission {
        let Some(s) = shared() else {
            return Admission::Go;
        };
        if s.provider.parked.load(Ordering::Acquire) {
            return Admission::Parked;
        }
        let until = s.provider.cooldown_until_ms.load(Ordering::Acquire);
        let now_ms = now_us() / 1000;
        if until > now_ms {
            return Admission::Wait(Duration::from_millis(until - now_ms));
        }
        if self.limits == [0; 3] {
            return Admission::Go;
        }
        let need = [1, input_tokens, output_tokens];
        s.provider.with_buckets(self.limits, |avail, caps| {
            let mut wait_us = 0i64;
            let mut want = [0i64; 3];
            for d in 0..3 {
                if caps[d] == 0 {
                    continue;
                }
                // A request larger than a whole bucket waits for a full one, not for ever.
                want[d] = i64::try_from(need[d])
                    .unwrap_or(i64::MAX / MICRO)
                    .saturating_mul(MICRO)
                    .min(caps[d]);
                if avail[d] < want[d] {
                    let rate = i64::try_from(self.limits[d]).unwrap_or(1).max(1);
                    wait_us = wait_us.max((want[d] - avail[d]).saturating_mul(60) / rate);
                }
            }
            if wait_us > 0 {
                return Admission::Wait(Duration::from_micros(
                    u64::try_from(wait_us).unwrap_or(0).max(1000),
                ));
            }
            for d in 0..3 {
                avail[d] -= want[d];
            }
            Admission::Go
        })
    }

    fn cool_down(&self, until: SystemTime) {
        if let Some(s) = shared() {
            let ms = until
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            s.provider.cooldown_until_ms.fetch_max(ms, Ordering::AcqRel);
        }
    }

    fn park(&self) {
        if let Some(s) = shared() {
            s.provider.parked.store(true, Ordering::Release);
        }
    }
}

/// Whether the provider is parked (a spend-limit refusal): then nothing is claimed.
pub fn provider_parked() -> bool {
    shared().is_some_and(|s| s.provider.parked.load(Ordering::Acquire))
}

/// Parked, and the end of the cooldown in milliseconds since the epoch (0: none).
pub fn provider_state() -> (bool, u64) {
    shared().map_or((false, 0), |s| {
        (
            s.provider.parked.load(Ordering::Acquire),
            s.provider.cooldown_until_ms.load(Ordering::Acquire),
        )
    })
}

/// Lets calls go to the provider again after a spend-limit refusal; says whether it was parked.
pub fn resume_provider() -> bool {
    shared().is_some_and(|s| {
        s.provider.cooldown_until_ms.store(0, Ordering::Release);
        s.provider.parked.swap(false, Ordering::AcqRel)
    })
}
