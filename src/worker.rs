//! Background worker processes: the static workers' loop and the dynamic tick worker, their signals and latch waits.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::cycle::{self, Context, CycleEnd, Wake};
use crate::error::{OrRaise, SCHEMA_VERSION};
use crate::guc;
use crate::store;
use crate::tick;

/// Set once SIGTERM arrives; pgrx's own flag is consumed when read, this one stays set.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Seconds before the postmaster restarts a static worker that died.
const RESTART_SECS: u64 = 5;

/// Registers the static workers; only possible while shared_preload_libraries is being processed.
pub fn register_static_workers() {
    for n in 1..=guc::workers() {
        BackgroundWorkerBuilder::new(&format!("damascus worker {n}"))
            .set_type("damascus worker")
            .set_library("damascus")
            .set_function("damascus_worker_main")
            .set_argument(Some(pg_sys::Datum::from(n)))
            .enable_spi_access()
            .set_restart_time(Some(Duration::from_secs(RESTART_SECS)))
            .load();
    }
}

fn report_appname(name: &str) {
    if let Ok(c) = CString::new(name) {
        // SAFETY: main thread of a connected backend; the string outlives the call, which copies it.
        unsafe { pg_sys::pgstat_report_appname(c.as_ptr()) };
    }
}

/// Shows what the worker waits for in pg_stat_activity.query, where every monitoring tool looks.
fn report_activity(what: &str) {
    if let Ok(c) = CString::new(what) {
        // SAFETY: main thread of a connected backend; pgstat copies the string into shared memory.
        unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, c.as_ptr()) };
    }
}

/// Sleeps on the latch for at most `timeout` and says whether to go on, cancel the cycle, or stop.
pub fn wait(timeout: Duration) -> Wake {
    let rc = unsafe {
        let rc = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as i64 as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        rc
    };
    if rc & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 {
        // Nothing we hold is worth keeping without a postmaster; exit like every other backend.
        unsafe { pg_sys::proc_exit(1) };
    }
    if BackgroundWorker::sigterm_received() {
        STOPPING.store(true, Ordering::SeqCst);
    }
    if STOPPING.load(Ordering::SeqCst) {
        return Wake::Stop;
    }
    // pg_cancel_backend() on a worker cancels its current cycle rather than raising an ERROR
    // outside any transaction.
    unsafe {
        if pg_sys::QueryCancelPending != 0 {
            pg_sys::QueryCancelPending = 0;
            return Wake::Interrupt;
        }
    }
    Wake::Continue
}

fn stopping() -> bool {
    if BackgroundWorker::sigterm_received() {
        STOPPING.store(true, Ordering::SeqCst);
    }
    STOPPING.load(Ordering::SeqCst)
}

/// Entry point of a static worker: run cycles while there is work, nap on the latch otherwise.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn damascus_worker_main(arg: pg_sys::Datum) {
    let n = arg.value() as i32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    let name = format!("damascus worker {n}");
    report_appname(&name);
    let worker = format!("{name} (pid {})", unsafe { pg_sys::MyProcPid });
    log!("{name} started, serving database \"{database}\"");

    // The extension is checked only until it is found, and again after a claim fails (it may have
    // been dropped), so a busy worker spends no transaction per cycle on the check.
    let mut ready = false;
    let mut said_waiting: Option<String> = None;
    let mut failed_claim: Option<String> = None;
    // Settings are read once and again only after a reload, not once per cycle.
    let mut loaded: Option<Context> = None;
    while !stopping() {
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, between transactions, as the postmaster's own loops do it.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            loaded = None;
        }
        let ctx = loaded.get_or_insert_with(|| Context::load(worker.clone()));
        let naptime = Duration::from_millis(ctx.settings.naptime_ms);
        let nap = || wait(naptime) == Wake::Stop;
        if !ready {
            let waiting_for = match cycle::transaction(|| store::extension_version().or_raise()) {
                Ok(Some(v)) if v == SCHEMA_VERSION => None,
                Ok(Some(v)) => Some(format!(
                    "extension \"damascus\" in database \"{database}\" is version {v}, the loaded library is {SCHEMA_VERSION}; waiting for ALTER EXTENSION damascus UPDATE"
                )),
                Ok(None) => Some(format!(
                    "extension \"damascus\" is not created in database \"{database}\" yet; waiting for CREATE EXTENSION damascus"
                )),
                Err(e) => {
                    warning!("{name}: {e}");
                    // Empty: nap and look again, without the once-per-reason log line.
                    Some(String::new())
                }
            };
            match waiting_for {
                None => {
                    ready = true;
                    said_waiting = None;
                    report_activity("damascus: working");
                    // The extension is there, so a failed claim had another cause worth a warning.
                    if let Some(e) = failed_claim.take() {
                        warning!("{name}: {e}");
                        if nap() {
                            break;
                        }
                        continue;
                    }
                }
                Some(why) => {
                    failed_claim = None;
                    // One log line per distinct reason, not one per nap.
                    if !why.is_empty() && said_waiting.as_deref() != Some(why.as_str()) {
                        log!("{name}: {why}");
                        report_activity(&format!("damascus: {why}"));
                        said_waiting = Some(why);
                    }
                    if nap() {
                        break;
                    }
                    continue;
                }
            }
        }
        let (end, wake) = cycle::run_one(ctx, &mut wait);
        unsafe { pg_sys::pgstat_report_stat(false) };
        if wake == Wake::Stop {
            break;
        }
        match end {
            // More work may be waiting: look again at once.
            CycleEnd::Done(_) => {}
            CycleEnd::Idle => {
                if nap() {
                    break;
                }
            }
            CycleEnd::Failed(e) => {
                ready = false;
                failed_claim = Some(e);
            }
        }
    }
    log!("{name} stopping");
    // A non-zero exit asks the postmaster to start a fresh worker after RESTART_SECS, so a worker
    // stopped with pg_terminate_backend() comes back; during shutdown nothing is restarted.
    unsafe { pg_sys::proc_exit(1) };
}

/// Entry point of the dynamic worker behind `damascus_tick()`: one cycle, result into shared memory.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn damascus_tick_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(slot) = tick::WorkerSlot::attach(arg) else {
        log!("damascus tick: the caller went away before the worker started");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(slot.database()), None);
    report_appname("damascus tick");
    let worker = format!(
        "damascus tick (pid {}, for pid {})",
        unsafe { pg_sys::MyProcPid },
        slot.caller_pid()
    );
    let end = cycle::run_one(&Context::load(worker), &mut wait).0;
    unsafe { pg_sys::pgstat_report_stat(true) };
    slot.finish(&end);
}
