//! Shared memory of the cluster's damascus processes: the static workers' slots (pid, cycles done) and a work
//! counter that wakes idle workers when a transaction that made a ticket claimable commits.
//!
//! Only there when damascus is in `shared_preload_libraries` (shared memory is sized at server start); without
//! it every function here is a no-op or answers nothing, and workers find work by `damascus.naptime` alone.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

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
    for w in &s.workers {
        let pid = w.pid.load(Ordering::Acquire);
        if pid == 0 {
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
