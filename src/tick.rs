//! `damascus_tick()` plumbing: a dynamic background worker runs the cycles (a plain SELECT cannot commit) and hands their rows back through a DSM segment.

use std::sync::atomic::{Ordering, fence};

use pgrx::bgworkers::BackgroundWorkerBuilder;
use pgrx::pg_sys;

use crate::cycle::TickRow;
use crate::error::{DamascusError, SCHEMA_VERSION};

const STATUS_PENDING: u32 = 0;
const STATUS_DONE: u32 = 2;
const STATUS_FAILED: u32 = 3;

/// Most cycles one `damascus_tick` may run (its rows are sized in shared memory up front).
pub const MAX_CYCLES: i32 = 10_000;

/// The shared-memory record between the caller and its tick worker: this header, then `max_cycles` rows.
#[repr(C)]
struct TickHeader {
    database: pg_sys::Oid,
    caller_pid: i32,
    status: u32,
    max_cycles: u32,
    /// 0: no time limit.
    max_seconds: u32,
    rows: u32,
    message: [u8; 512],
}

/// One cycle's row.
#[repr(C)]
struct RowSlot {
    ticket_id: i64,
    phase: [u8; 64],
    verdict: [u8; 64],
    state: [u8; 64],
    has_state: u32,
}

fn segment_size(max_cycles: u32) -> usize {
    std::mem::size_of::<TickHeader>() + std::mem::size_of::<RowSlot>() * max_cycles as usize
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

/// The worker's side of the segment.
pub struct WorkerSlot {
    seg: *mut pg_sys::dsm_segment,
    header: *mut TickHeader,
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
        // SAFETY: `seg` is attached; the caller sized it for the header and max_cycles rows and zeroed it.
        let header = unsafe { pg_sys::dsm_segment_address(seg) } as *mut TickHeader;
        Some(WorkerSlot { seg, header })
    }

    fn header(&self) -> &TickHeader {
        // SAFETY: mapped until `finish` detaches it, which consumes self; only this worker writes it meanwhile.
        unsafe { &*self.header }
    }

    pub fn database(&self) -> pg_sys::Oid {
        self.header().database
    }

    pub fn caller_pid(&self) -> i32 {
        self.header().caller_pid
    }

    pub fn max_cycles(&self) -> usize {
        self.header().max_cycles as usize
    }

    /// The time limit, if the caller set one.
    pub fn max_seconds(&self) -> Option<u32> {
        Some(self.header().max_seconds).filter(|s| *s > 0)
    }

    /// Appends a cycle's row (rows past `max_cycles` cannot happen: the driver starts no more cycles).
    pub fn push(&mut self, row: &TickRow) {
        // SAFETY: mapped until `finish`; the caller reads only after this worker has exited.
        let header = unsafe { &mut *self.header };
        if header.rows >= header.max_cycles {
            return;
        }
        // SAFETY: row `header.rows` lies within the segment, which holds max_cycles rows after the header.
        let slot = unsafe { &mut *(self.header.add(1) as *mut RowSlot).add(header.rows as usize) };
        slot.ticket_id = row.ticket_id;
        put(&mut slot.phase, &row.phase);
        put(&mut slot.verdict, &row.verdict);
        if let Some(s) = &row.state {
            put(&mut slot.state, s);
            slot.has_state = 1;
        }
        header.rows += 1;
    }

    /// Ends the tick: its rows stand, or, when `failure` is given and no cycle ran, the tick is an error.
    pub fn finish(self, failure: Option<&str>) {
        // SAFETY: as in `push`.
        let header = unsafe { &mut *self.header };
        match failure {
            Some(msg) if header.rows == 0 => {
                put(&mut header.message, msg);
                header.status = STATUS_FAILED;
            }
            _ => header.status = STATUS_DONE,
        }
        fence(Ordering::SeqCst);
        // SAFETY: attached in `attach`, detached once here; no reference into the segment outlives this.
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

/// Refuses a tick on a hot standby, and one whose schema is not the library's: a library newer than the schema
/// (installed, server restarted, ALTER EXTENSION not yet run) would run its statements against tables that lack
/// their columns. Refused at once, saying what to run.
pub fn ready_to_run() -> Result<(), DamascusError> {
    // SAFETY: a read of shared recovery state, on the calling backend's main thread.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(DamascusError::InRecovery);
    }
    match crate::store::extension_version()? {
        None => Err(DamascusError::ExtensionMissing),
        Some(v) if v != SCHEMA_VERSION => Err(DamascusError::SchemaOutdated { installed: v }),
        Some(_) => Ok(()),
    }
}

/// Runs up to `max_cycles` cycles (in flight together, as a static worker would, within `max_seconds` when
/// given) in a fresh background worker and waits for it; one row per cycle. Starts no worker when nothing is
/// claimable, so an idle tick costs one read-only query.
pub fn tick(max_cycles: i32, max_seconds: Option<i32>) -> Result<Vec<TickRow>, DamascusError> {
    if !(1..=MAX_CYCLES).contains(&max_cycles) {
        return Err(DamascusError::InvalidArgument {
            message: format!(
                "damascus_tick: max_cycles must be between 1 and {MAX_CYCLES}, not {max_cycles}"
            ),
            detail: "It is how many cycles this call may run; their rows are sized up front."
                .into(),
        });
    }
    if let Some(s) = max_seconds.filter(|s| !(1..=86_400).contains(s)) {
        return Err(DamascusError::InvalidArgument {
            message: format!("damascus_tick: max_seconds must be between 1 and 86400, or NULL, not {s}"),
            detail: "At max_seconds the calls still in flight are stopped and their claims given back; NULL waits for them.".into(),
        });
    }
    ready_to_run()?;
    if crate::shared::provider_parked()
        || !crate::store::anything_claimable(crate::guc::stale_claim_minutes())?
    {
        return Ok(Vec::new());
    }
    let size = segment_size(max_cycles as u32);
    // SAFETY: calling backend's main thread inside a transaction; dsm_create raises an ERROR rather than
    // returning NULL (flags 0), and the segment is sized for the header and its rows, zeroed before use.
    let seg = unsafe { pg_sys::dsm_create(size, 0) };
    // SAFETY: as above.
    let header = unsafe { pg_sys::dsm_segment_address(seg) } as *mut TickHeader;
    // SAFETY: `header` points to `size` writable bytes no one else sees yet.
    unsafe {
        std::ptr::write_bytes(header as *mut u8, 0, size);
        (*header).database = pg_sys::MyDatabaseId;
        (*header).caller_pid = pg_sys::MyProcPid;
        (*header).status = STATUS_PENDING;
        (*header).max_cycles = max_cycles as u32;
        (*header).max_seconds = max_seconds.unwrap_or(0) as u32;
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
    // SAFETY: the worker has exited, so nothing writes the segment any more; it is still attached.
    let h = unsafe { &*header };
    let result = match h.status {
        STATUS_DONE => {
            let rows = (0..h.rows.min(h.max_cycles) as usize)
                .map(|i| {
                    // SAFETY: row i < rows <= max_cycles lies within the segment.
                    let r = unsafe { &*(header.add(1) as *const RowSlot).add(i) };
                    TickRow {
                        ticket_id: r.ticket_id,
                        phase: get(&r.phase),
                        verdict: get(&r.verdict),
                        state: (r.has_state != 0).then(|| get(&r.state)),
                    }
                })
                .collect();
            Ok(rows)
        }
        STATUS_FAILED => Err(DamascusError::TickFailed { detail: get(&h.message) }),
        _ => Err(DamascusError::TickWorkerLost {
            detail: "The worker exited before it finished its cycles (it may have failed to start or crashed).".into(),
        }),
    };
    // SAFETY: `h` is not used after this; the segment is detached once on this path.
    unsafe { pg_sys::dsm_detach(seg) };
    result
}
