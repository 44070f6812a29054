//! SIGTERM for damascus's background workers: a stop request that also ends a wait on a lock inside a transaction.
//!
//! pgrx's SIGTERM handler only raises a flag and sets the latch, which a backend waiting on a heavyweight lock
//! (a row a user holds with `SELECT … FOR UPDATE`, `LOCK damascus.tickets`) does not look at until the lock is
//! granted or `damascus.lock_timeout` fires. This handler also cancels that wait, the way `pg_cancel_backend`
//! would, so the transaction ends with an ERROR the worker catches, and the worker then gives its claims back
//! and exits. A transaction that is not waiting on a lock is left to finish: a verdict about to commit is
//! worth keeping.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;

/// Set once SIGTERM arrives and never cleared: the process is on its way out.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Replaces the SIGTERM handler pgrx installed; call right after `attach_signal_handlers`.
pub fn install() {
    // SAFETY: main thread during worker start-up; pqsignal swaps the process's handler with sigaction, and the
    // handler below is async-signal-safe (atomics, sig_atomic_t flags, SetLatch).
    unsafe { pg_sys::pqsignal(libc::SIGTERM, Some(on_sigterm)) };
}

/// Whether SIGTERM has arrived (a `pg_terminate_backend`, a fast or smart shutdown).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Drops a cancel the handler raised but no lock wait consumed, so the transactions that give claims back
/// are not cancelled by it.
pub fn clear_stale_cancel() {
    if stopping() {
        // SAFETY: main thread, outside any transaction; QueryCancelPending is a sig_atomic_t.
        unsafe { (&raw mut pg_sys::QueryCancelPending).write_volatile(0) };
    }
}

unsafe extern "C-unwind" fn on_sigterm(_signo: c_int) {
    // SAFETY: a signal handler on the backend's main thread (every other thread is born with all signals
    // blocked). Writing errno back, as Postgres's own handlers do, keeps an interrupted syscall's errno intact.
    unsafe {
        let errno = *libc::__errno_location();
        STOPPING.store(true, Ordering::SeqCst);
        (&raw mut pg_sys::ShutdownRequestPending).write_volatile(1);
        // MyProc->waitLock is set while ProcSleep waits for a heavyweight lock (row locks wait on a transaction
        // id, which is one) and cleared when the wait ends; the process only reads its own PGPROC here.
        let proc = pg_sys::MyProc;
        if !pg_sys::proc_exit_inprogress && !proc.is_null() && !(*proc).waitLock.is_null() {
            (&raw mut pg_sys::InterruptPending).write_volatile(1);
            (&raw mut pg_sys::QueryCancelPending).write_volatile(1);
        }
        pg_sys::SetLatch(pg_sys::MyLatch);
        *libc::__errno_location() = errno;
    }
}
