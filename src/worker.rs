//! Background worker processes: the static workers' loop and the dynamic tick worker, and their latch waits.

use std::ffi::CString;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::cycle::{self, Begun, Calling, Context, Lease, Wake};
use crate::error::{OrRaise, SCHEMA_VERSION};
use crate::guc;
use crate::shared;
use crate::signals;
use crate::store;
use crate::tick;

/// Seconds before the postmaster restarts a static worker that died.
const RESTART_SECS: u64 = 5;

/// How often the first worker looks for cycle rows past `damascus.cycle_retention`.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

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
    // SAFETY: main thread; MyLatch is this process's own latch, set by signal handlers and the HTTP threads'
    // SIGUSR1.
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
        // SAFETY: main thread, no transaction open.
        unsafe { pg_sys::proc_exit(1) };
    }
    if signals::stopping() {
        return Wake::Stop;
    }
    // pg_cancel_backend() on a worker cancels its current cycle rather than raising an ERROR
    // outside any transaction.
    // SAFETY: main thread; the flag is a sig_atomic_t that only signal handlers set.
    unsafe {
        if pg_sys::QueryCancelPending != 0 {
            pg_sys::QueryCancelPending = 0;
            return Wake::Interrupt;
        }
    }
    Wake::Continue
}

/// Whether the extension in the worker's database is the one this library runs; `Some(why)` when not
/// (an empty reason: the check itself failed and was logged).
fn waiting_for(name: &str, database: &str) -> Option<String> {
    // SAFETY: main thread, between transactions; a read of shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Some(format!(
            "database \"{database}\" is on a hot standby, where no cycle can be written; waiting for promotion"
        ));
    }
    match cycle::transaction(|| store::extension_version().or_raise()) {
        Ok(Some(v)) if v == SCHEMA_VERSION => None,
        Ok(Some(v)) => Some(format!(
            "extension \"damascus\" in database \"{database}\" is version {v}, the loaded library is {SCHEMA_VERSION}; waiting for ALTER EXTENSION damascus UPDATE"
        )),
        Ok(None) => Some(format!(
            "extension \"damascus\" is not created in database \"{database}\" yet; waiting for CREATE EXTENSION damascus"
        )),
        Err(e) => {
            warning!("{name}: {e}");
            Some(String::new())
        }
    }
}

/// Entry point of a static worker: a driver that keeps up to `damascus.max_inflight` cycles in flight, each
/// its own claim, phase and verdict transactions, and sleeps on its latch until a call finishes, a heartbeat
/// is due, new work may be there, or a signal arrives.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn damascus_worker_main(arg: pg_sys::Datum) {
    let n = arg.value() as i32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    signals::install();
    let database = guc::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    let name = format!("damascus worker {n}");
    report_appname(&name);
    if let Err(e) = cycle::prepare_session() {
        warning!("{name}: {e}");
    }
    // SAFETY: MyProcPid is set before any extension code runs and never changes.
    let pid = unsafe { pg_sys::MyProcPid };
    let worker = format!("{name} (pid {pid})");
    let slot = usize::try_from(n).unwrap_or(0);
    shared::register_worker(slot, pid);
    log!("{name} started, serving database \"{database}\"");

    // The extension is checked only until it is found, and again after a claim fails (it may have
    // been dropped or be older than the library), so a busy worker spends no transaction on the check.
    let mut ready = false;
    let mut said_waiting: Option<String> = None;
    let mut failed_claim: Option<String> = None;
    // Settings are read once and again only after a reload. Cycles in flight keep the context they started
    // with (an Rc), so a reload applies to cycles started after it and never waits for them.
    let mut loaded: Option<Rc<Context>> = None;
    let mut lease: Option<Lease> = None;
    let mut calls: Vec<Box<Calling>> = Vec::new();
    // Nothing was claimable: do not look again before this, unless a verdict may have made work.
    let mut idle_until: Option<Instant> = None;
    let mut shown_activity = String::new();
    let mut shown_count = usize::MAX;
    let mut activity_shown_at = Instant::now();
    let mut seen_work = shared::work_seq();
    // Only the first worker prunes old cycle rows; a full batch means more are due at once.
    let mut prune_due = (slot == 1).then(Instant::now);
    while !signals::stopping() {
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, between transactions, as the postmaster's own loops do it.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            if let Err(e) = cycle::apply_lock_timeout() {
                warning!("{name}: {e}");
            }
            loaded = None;
            lease = None;
            // A nap decided under the old naptime ends now, so a shorter one applies at once.
            idle_until = None;
        }
        let ctx = Rc::clone(loaded.get_or_insert_with(|| Rc::new(Context::load(worker.clone()))));
        let lease = lease.get_or_insert_with(|| Lease::new(ctx.settings.heartbeat_seconds));
        let naptime = Duration::from_millis(ctx.settings.naptime_ms);
        // A commit made a ticket claimable (a submit, a verdict, an approval): look now, not after the nap.
        let work = shared::work_seq();
        if work != seen_work {
            seen_work = work;
            idle_until = None;
        }

        // Verdicts of the calls that finished.
        let mut i = 0;
        while i < calls.len() {
            match calls[i].poll() {
                Some(outcome) => {
                    calls.swap_remove(i).finish(outcome);
                    shared::count_cycle(slot);
                    // The verdict may have moved a ticket into the next phase's state.
                    idle_until = None;
                }
                None => i += 1,
            }
        }
        lease.renew(&ctx, &mut calls);

        if !ready && calls.is_empty() {
            match waiting_for(&name, &database) {
                None => {
                    ready = true;
                    said_waiting = None;
                    // The extension is there, so a failed claim had another cause worth a warning.
                    if let Some(e) = failed_claim.take() {
                        warning!("{name}: {e}");
                        idle_until = Some(Instant::now() + naptime);
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
                    idle_until = Some(Instant::now() + naptime);
                }
            }
        }

        if ready && prune_due.is_some_and(|t| Instant::now() >= t) {
            let pruned = cycle::prune(&ctx);
            prune_due = Some(if pruned >= i64::from(cycle::PRUNE_BATCH) {
                Instant::now()
            } else {
                Instant::now() + PRUNE_EVERY
            });
        }

        // New claims, up to max_inflight.
        if ready && idle_until.is_none_or(|t| Instant::now() >= t) {
            idle_until = None;
            // One claim transaction for all the room there is; a short batch means nothing more is claimable.
            let want = ctx.settings.max_inflight.saturating_sub(calls.len());
            if want > 0 && !signals::stopping() {
                let begun = cycle::begin_many(&ctx, want);
                let mut claimed = 0;
                for b in begun {
                    match b {
                        Begun::Calling(c) => {
                            claimed += 1;
                            calls.push(c);
                        }
                        Begun::Ended(_) => {
                            claimed += 1;
                            shared::count_cycle(slot);
                        }
                        Begun::Idle => {}
                        Begun::Failed(e) => {
                            ready = false;
                            failed_claim = Some(e);
                        }
                    }
                }
                if claimed < want {
                    idle_until = Some(Instant::now() + naptime);
                }
            }
        }
        // What the worker does, where every monitoring tool looks; the ages change, so at most once a second.
        if ready
            && (calls.len() != shown_count || activity_shown_at.elapsed() >= Duration::from_secs(1))
        {
            shown_count = calls.len();
            let text = cycle::describe_calls(&calls);
            if text != shown_activity {
                report_activity(&text);
                shown_activity = text;
            }
            activity_shown_at = Instant::now();
        }
        // SAFETY: main thread, no transaction open; bgworkers flush their statistics themselves.
        unsafe { pg_sys::pgstat_report_stat(false) };

        let mut timeout = if calls.is_empty() {
            naptime
        } else {
            // Wakes at least once a second while calls run, so pg_stat_activity shows their ages.
            lease.due_in().min(Duration::from_secs(1))
        };
        if let Some(t) = idle_until {
            timeout = timeout.min(t.saturating_duration_since(Instant::now()));
        } else if ready && calls.len() < ctx.settings.max_inflight {
            timeout = Duration::ZERO;
        }
        match wait(timeout) {
            Wake::Continue => {}
            Wake::Interrupt => {
                cycle::abandon(
                    &ctx,
                    std::mem::take(&mut calls),
                    "the worker's cycles were cancelled (pg_cancel_backend) during the LLM call",
                );
                idle_until = Some(Instant::now() + naptime);
            }
            Wake::Stop => break,
        }
    }
    if let Some(ctx) = loaded {
        let n = calls.len();
        cycle::abandon(
            &ctx,
            calls,
            "the worker was asked to stop during the LLM call",
        );
        log!("{name} stopping; gave back {n} claim(s) in flight");
    } else {
        log!("{name} stopping");
    }
    shared::unregister_worker(slot);
    // A non-zero exit asks the postmaster to start a fresh worker after RESTART_SECS, so a worker
    // stopped with pg_terminate_backend() comes back; during shutdown nothing is restarted.
    // SAFETY: main thread, no transaction open; proc_exit runs the backend's exit callbacks.
    unsafe { pg_sys::proc_exit(1) };
}

/// How often a tick worker checks that its caller is still there.
const CALLER_CHECK: Duration = Duration::from_secs(1);

/// Entry point of the dynamic worker behind `damascus_tick()`: up to `max_cycles` cycles in flight together,
/// as a static worker runs them, within `max_seconds` when set; each cycle's row into shared memory.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn damascus_tick_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    signals::install();
    let Some(mut slot) = tick::WorkerSlot::attach(arg) else {
        log!("damascus tick: the caller went away before the worker started");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(slot.database()), None);
    report_appname("damascus tick");
    if let Err(e) = cycle::prepare_session() {
        warning!("damascus tick: {e}");
    }
    let caller = slot.caller_pid();
    let worker = format!(
        "damascus tick (pid {}, for pid {caller})",
        // SAFETY: MyProcPid is set before any extension code runs and never changes.
        unsafe { pg_sys::MyProcPid },
    );
    let ctx = Rc::new(Context::load(worker));
    let max_cycles = slot.max_cycles();
    let deadline = slot
        .max_seconds()
        .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
    let mut lease = Lease::new(ctx.settings.heartbeat_seconds);
    let mut calls: Vec<Box<Calling>> = Vec::new();
    let mut started = 0;
    // Nothing more was claimable at the last look; a verdict may change that.
    let mut dry = false;
    let mut failure: Option<String> = None;
    loop {
        let mut i = 0;
        while i < calls.len() {
            match calls[i].poll() {
                Some(outcome) => {
                    slot.push(&calls.swap_remove(i).finish(outcome));
                    dry = false;
                }
                None => i += 1,
            }
        }
        for lost in lease.renew(&ctx, &mut calls) {
            slot.push(&lost);
        }
        let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
        if out_of_time {
            for r in cycle::abandon(
                &ctx,
                std::mem::take(&mut calls),
                "damascus_tick reached its max_seconds during the LLM call",
            ) {
                slot.push(&r);
            }
            break;
        }
        let room =
            (max_cycles - started).min(ctx.settings.max_inflight.saturating_sub(calls.len()));
        if !dry && room > 0 {
            let mut claimed = 0;
            for b in cycle::begin_many(&ctx, room) {
                match b {
                    Begun::Calling(c) => {
                        claimed += 1;
                        calls.push(c);
                    }
                    Begun::Ended(r) => {
                        claimed += 1;
                        slot.push(&r);
                    }
                    Begun::Idle => {}
                    Begun::Failed(e) => failure = Some(e),
                }
            }
            started += claimed;
            dry = claimed < room;
        }
        if calls.is_empty() && (dry || started >= max_cycles) {
            break;
        }
        let mut timeout = lease.due_in().min(CALLER_CHECK);
        if let Some(d) = deadline {
            timeout = timeout.min(d.saturating_duration_since(Instant::now()));
        }
        // The tick is tied to its caller: a caller that is terminated, or that notices its client is gone
        // (client_connection_check_interval), exits without stopping us, so look for it at least once a
        // second and stop the calls, giving the claims back, when it is gone.
        let why = match wait(timeout) {
            // SAFETY: main thread; BackendPidGetProc takes ProcArrayLock itself and only reads the proc array.
            Wake::Continue if unsafe { pg_sys::BackendPidGetProc(caller) }.is_null() => {
                log!("damascus tick: its caller (pid {caller}) is gone; stopping its calls");
                "the damascus_tick caller went away during the LLM call"
            }
            Wake::Continue => continue,
            Wake::Interrupt => "the cycle was cancelled during the LLM call",
            Wake::Stop => "the worker was asked to stop during the LLM call",
        };
        for r in cycle::abandon(&ctx, std::mem::take(&mut calls), why) {
            slot.push(&r);
        }
        break;
    }
    // A tick that ran several cycles also does the retention's share of a static worker (with workers = 0,
    // nobody else does).
    if max_cycles > 1 {
        cycle::prune(&ctx);
    }
    // SAFETY: main thread, no transaction open; flushes this process's statistics before it exits.
    unsafe { pg_sys::pgstat_report_stat(true) };
    slot.finish(failure.as_deref());
}
