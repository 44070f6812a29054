//! `damascus_tick()` plumbing: a dynamic background worker runs one cycle (a plain SELECT cannot commit) and hands its row back through a DSM segment.

use std::sync::atomic::{Ordering, fence};

use pgrx::bgworkers::BackgroundWorkerBuilder;
use pgrx::pg_sys;

use crate::cycle::{CycleEnd, TickRow};
use crate::error::{DamascusError, SCHEMA_VERSION};

const STATUS_PENDING: u32 = 0;
const STATUS_IDLE: u32 = 1;
const STATUS_DONE: u32 = 2;
const STATUS_FAILED: u32 = 3;

/// The shared-memory record between the caller and its tick worker.
#[repr(C)]
struct TickSlot {
    database: pg_sys::Oid,
    caller_pid: i32,
    status: u32,
    ticket_id: i64,
    phase: [u8; 64],
    verdict: [u8; 64],
    state: [u8; 64],
    has_state: u32,
    message: [u8; 512],
}

fn put(dst: &mut [u8], s: &str) {
    // Cut on a char boundary so the caller always reads valid UTF-8.
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    dst[n] = 0;
}

fn get(src: &[u8]) -> String {
    let end = src.iter().position(|b| *b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

/// The worker's side of the slot.
pub struct WorkerSlot {
    seg: *mut pg_sys::dsm_segment,
    slot: *mut TickSlot,
}

impl WorkerSlot {
    /// Attaches to the caller's segment; `None` if the caller already left.
    pub fn attach(arg: pg_sys::Datum) -> Option<WorkerSlot> {
        let handle = arg.value() as pg_sys::dsm_handle;
        // SAFETY: main thread of the worker; dsm_attach returns NULL for a segment that no longer exists.
        let seg = unsafe { pg_sys::dsm_attach(handle) };
        if seg.is_null() {
            return None;
        }
        // SAFETY: `seg` is attached; the caller sized it for one TickSlot and zeroed it before starting us.
        let slot = unsafe { pg_sys::dsm_segment_address(seg) } as *mut TickSlot;
        Some(WorkerSlot { seg, slot })
    }

    pub fn database(&self) -> pg_sys::Oid {
        // SAFETY: the slot stays mapped until `finish` detaches it, which consumes self.
        unsafe { (*self.slot).database }
    }

    pub fn caller_pid(&self) -> i32 {
        // SAFETY: as in `database`.
        unsafe { (*self.slot).caller_pid }
    }

    /// Writes the result and detaches.
    pub fn finish(self, end: &CycleEnd) {
        // SAFETY: mapped until the detach below; the caller reads it only after this worker has exited.
        let slot = unsafe { &mut *self.slot };
        match end {
            CycleEnd::Idle => slot.status = STATUS_IDLE,
            CycleEnd::Done(row) => {
                slot.ticket_id = row.ticket_id;
                put(&mut slot.phase, &row.phase);
                put(&mut slot.verdict, &row.verdict);
                if let Some(s) = &row.state {
                    put(&mut slot.state, s);
                    slot.has_state = 1;
                }
                slot.status = STATUS_DONE;
            }
            CycleEnd::Failed(msg) => {
                put(&mut slot.message, msg);
                slot.status = STATUS_FAILED;
            }
        }
        fence(Ordering::SeqCst);
        // SAFETY: attached in `attach`, detached once here; no reference into the slot outlives this.
        unsafe { pg_sys::dsm_detach(self.seg) };
    }
}

/// Asks the postmaster to stop the worker if the caller leaves early (query cancel, statement_timeout),
/// so an abandoned cycle gives its claim back instead of running on unseen.
struct TerminateOnDrop(*mut pg_sys::BackgroundWorkerHandle);

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a handle from RegisterDynamicBackgroundWorker in this backend; terminating a worker
            // that already exited is a no-op.
            unsafe { pg_sys::TerminateBackgroundWorker(self.0) };
        }
    }
}

/// Runs one cycle in a fresh background worker and waits for it.
pub fn tick() -> Result<Option<TickRow>, DamascusError> {
    // SAFETY: a read of shared recovery state, on the calling backend's main thread.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(DamascusError::InRecovery);
    }
    // A library newer than the schema (installed, server restarted, ALTER EXTENSION not yet run) would run
    // its statements against tables that lack their columns: refuse at once and say what to run.
    match crate::store::extension_version()? {
        None => return Err(DamascusError::ExtensionMissing),
        Some(v) if v != SCHEMA_VERSION => {
            return Err(DamascusError::SchemaOutdated { installed: v });
        }
        Some(_) => {}
    }
    // SAFETY: calling backend's main thread inside a transaction; dsm_create raises an ERROR rather than
    // returning NULL (flags 0), and the segment is sized for one TickSlot, which is zeroed before use.
    let seg = unsafe { pg_sys::dsm_create(std::mem::size_of::<TickSlot>(), 0) };
    // SAFETY: as above.
    let slot = unsafe { pg_sys::dsm_segment_address(seg) } as *mut TickSlot;
    // SAFETY: `slot` points to size_of::<TickSlot>() writable bytes no one else sees yet.
    unsafe {
        std::ptr::write_bytes(slot as *mut u8, 0, std::mem::size_of::<TickSlot>());
        (*slot).database = pg_sys::MyDatabaseId;
        (*slot).caller_pid = pg_sys::MyProcPid;
        (*slot).status = STATUS_PENDING;
    }
    // SAFETY: `seg` is the live segment created above.
    let handle = unsafe { pg_sys::dsm_segment_handle(seg) };

    let builder = BackgroundWorkerBuilder::new("damascus tick")
        .set_type("damascus tick")
        .set_library("damascus")
        .set_function("damascus_tick_main")
        .set_argument(Some(pg_sys::Datum::from(handle)))
        .enable_spi_access()
        .set_restart_time(None)
        // SAFETY: MyProcPid is set before any extension code runs and never changes.
        .set_notify_pid(unsafe { pg_sys::MyProcPid });
    let mut bgw: pg_sys::BackgroundWorker = (&builder).into();
    let mut worker: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: `bgw` is a fully initialised struct built by pgrx; `worker` receives the handle.
    if !unsafe { pg_sys::RegisterDynamicBackgroundWorker(&mut bgw, &mut worker) } {
        // SAFETY: the segment created above, detached once on this path.
        unsafe { pg_sys::dsm_detach(seg) };
        return Err(DamascusError::NoWorkerSlot {
            // SAFETY: a plain read of a setting on the main thread.
            max_worker_processes: unsafe { pg_sys::max_worker_processes }.to_string(),
        });
    }
    let mut guard = TerminateOnDrop(worker);
    // SAFETY: the handle just registered, with this backend as notify_pid; an interrupt while waiting
    // unwinds through `guard`, which terminates the worker.
    let status = unsafe { pg_sys::WaitForBackgroundWorkerShutdown(worker) };
    guard.0 = std::ptr::null_mut();
    if status == pg_sys::BgwHandleStatus::BGWH_POSTMASTER_DIED {
        return Err(DamascusError::PostmasterDied);
    }
    fence(Ordering::SeqCst);
    // SAFETY: the worker has exited, so nothing writes the slot any more; the segment is still attached.
    let s = unsafe { &*slot };
    let result = match s.status {
        STATUS_IDLE => Ok(None),
        STATUS_DONE => Ok(Some(TickRow {
            ticket_id: s.ticket_id,
            phase: get(&s.phase),
            verdict: get(&s.verdict),
            state: (s.has_state != 0).then(|| get(&s.state)),
        })),
        STATUS_FAILED => Err(DamascusError::TickFailed { detail: get(&s.message) }),
        _ => Err(DamascusError::TickWorkerLost {
            detail: "The worker exited before it finished its cycle (it may have failed to start or crashed).".into(),
        }),
    };
    // SAFETY: `s` is not used after this; the segment is detached once on this path.
    unsafe { pg_sys::dsm_detach(seg) };
    result
}
