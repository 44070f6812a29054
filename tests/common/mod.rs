//! Shared harness for the integration tests: boots the pgrx test cluster, points it at a fakellm server, and reads rows back.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub use fakellm::{Behavior, FakeLlm};
pub use postgres::Client;

/// Boots this test binary's cluster once (pgrx-tests installs the extension and creates it in `pgrx_tests`).
pub fn boot(conf: Vec<&'static str>) {
    static BOOTED: OnceLock<()> = OnceLock::new();
    BOOTED.get_or_init(|| {
        pgrx_tests::run_test("ready", None, conf).expect("test cluster boots");
    });
}

/// A fresh client connection, as a user would have (autocommit).
pub fn client() -> Client {
    pgrx_tests::client().expect("connect to the test cluster").0
}

/// Serialises the tests of one binary: they share a cluster and a stand-in LLM.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the binary's lock and boots its cluster with damascus preloaded, the stand-in's key and no static
/// worker (every cycle is a manual tick), plus `extra` settings.
pub fn setup_ticks(extra: &[&'static str]) -> MutexGuard<'static, ()> {
    let guard = serial();
    let mut conf = vec![
        "shared_preload_libraries = 'damascus'",
        "damascus.workers = 0",
        "damascus.llm_api_key = 'sk-fake'",
    ];
    conf.extend_from_slice(extra);
    boot(conf);
    guard
}

/// The binary's stand-in LLM, started once.
pub fn llm() -> &'static FakeLlm {
    static LLM: OnceLock<FakeLlm> = OnceLock::new();
    LLM.get_or_init(|| FakeLlm::start(Behavior::Good).expect("fakellm starts"))
}

/// `ALTER SYSTEM SET` + reload, then waits until a new session sees the value (so a new worker will too).
pub fn set_conf(name: &str, value: &str) {
    let mut c = client();
    c.batch_execute(&format!(
        "ALTER SYSTEM SET {name} = '{}'",
        value.replace('\'', "''")
    ))
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        &format!("{name} = {value}"),
        Duration::from_secs(10),
        || {
            // pg_settings shows the raw value ("5", not "5min"); hidden settings are only in current_setting.
            let got: String = client()
            .query_one(
                "SELECT coalesce((SELECT setting FROM pg_settings WHERE name = $1), current_setting($1))",
                &[&name],
            )
            .unwrap()
            .get(0);
            (got == shown(name, value)).then_some(())
        },
    );
}

/// What SHOW gives for `value` of setting `name`: the API key shows as a fingerprint, never itself.
fn shown(name: &str, value: &str) -> String {
    if name == "damascus.llm_api_key" {
        damascus_core::wire::key_shown(Some(value))
    } else {
        value.to_string()
    }
}

/// `ALTER SYSTEM RESET` + reload.
pub fn reset_conf(name: &str) {
    let mut c = client();
    c.batch_execute(&format!("ALTER SYSTEM RESET {name}"))
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

/// Points damascus at the stand-in LLM and empties the tables.
pub fn fresh(behavior: Behavior) -> &'static FakeLlm {
    let llm = llm();
    llm.set_behavior(behavior);
    llm.clear_requests();
    let url: String = client()
        .query_one("SELECT current_setting('damascus.llm_url')", &[])
        .unwrap()
        .get(0);
    if url != llm.url() {
        set_conf("damascus.llm_url", &llm.url());
    }
    client()
        .batch_execute("TRUNCATE damascus.tickets, damascus.cycles RESTART IDENTITY")
        .unwrap();
    llm
}

/// Polls `f` until it yields a value or `timeout` passes (then panics naming `what`).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn submit(c: &mut Client, title: &str, body: &str) -> i64 {
    c.query_one("SELECT damascus_submit($1, $2)", &[&title, &body])
        .unwrap()
        .get(0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct TickRow {
    pub ticket_id: i64,
    pub phase: String,
    pub verdict: String,
    pub state: Option<String>,
}

/// `SELECT * FROM damascus_tick()`: `None` when nothing was claimable.
pub fn tick(c: &mut Client) -> Option<TickRow> {
    let rows = c.query("SELECT * FROM damascus_tick()", &[]).unwrap();
    assert!(rows.len() <= 1, "a tick returns at most one row");
    rows.first().map(|r| TickRow {
        ticket_id: r.get("ticket_id"),
        phase: r.get("phase"),
        verdict: r.get("verdict"),
        state: r.get("state"),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub state: String,
    pub attempts: i32,
    pub llm_errors: i32,
    pub claimed_by: Option<String>,
    pub claim_token: Option<i64>,
    pub claimed: bool,
    pub last_verdict: Option<String>,
    pub last_error: Option<String>,
    pub spec: Option<String>,
    pub not_before_secs: Option<f64>,
}

pub fn ticket(c: &mut Client, id: i64) -> Ticket {
    let r = c
        .query_one(
            "SELECT state, attempts, llm_errors, claimed_by, claim_token, claimed_at IS NOT NULL AS claimed,
                    last_verdict, last_error, outputs->>'refine_spec' AS spec,
                    extract(epoch FROM not_before - now())::float8 AS not_before_secs
             FROM damascus.tickets WHERE id = $1",
            &[&id],
        )
        .unwrap();
    Ticket {
        state: r.get("state"),
        attempts: r.get("attempts"),
        llm_errors: r.get("llm_errors"),
        claimed_by: r.get("claimed_by"),
        claim_token: r.get("claim_token"),
        claimed: r.get("claimed"),
        last_verdict: r.get("last_verdict"),
        last_error: r.get("last_error"),
        spec: r.get("spec"),
        not_before_secs: r.get("not_before_secs"),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    pub id: i64,
    pub phase: String,
    pub attempt: i32,
    pub worker: String,
    pub claim_token: i64,
    pub claim_xid: i64,
    pub phase_xid: Option<i64>,
    pub verdict_xid: Option<i64>,
    pub verdict: Option<String>,
    pub detail: Option<String>,
    pub http_status: Option<i32>,
    pub stop_reason: Option<String>,
    pub output_tokens: Option<i32>,
    pub llm_ms: Option<i32>,
}

pub fn cycles(c: &mut Client, ticket_id: i64) -> Vec<Cycle> {
    c.query(
        "SELECT id, phase, attempt, worker, claim_token, claim_xid, phase_xid, verdict_xid, verdict, detail,
                http_status, stop_reason, output_tokens, llm_ms
         FROM damascus.cycles WHERE ticket_id = $1 ORDER BY id",
        &[&ticket_id],
    )
    .unwrap()
    .iter()
    .map(|r| Cycle {
        id: r.get("id"),
        phase: r.get("phase"),
        attempt: r.get("attempt"),
        worker: r.get("worker"),
        claim_token: r.get("claim_token"),
        claim_xid: r.get("claim_xid"),
        phase_xid: r.get("phase_xid"),
        verdict_xid: r.get("verdict_xid"),
        verdict: r.get("verdict"),
        detail: r.get("detail"),
        http_status: r.get("http_status"),
        stop_reason: r.get("stop_reason"),
        output_tokens: r.get("output_tokens"),
        llm_ms: r.get("llm_ms"),
    })
    .collect()
}

/// Marks a ticket as claimed by someone else `minutes_ago` minutes ago, as a crashed worker would leave it.
pub fn backdate_claim(c: &mut Client, id: i64, minutes_ago: i32, by: &str) -> i64 {
    c.query_one(
        "UPDATE damascus.tickets
         SET claimed_at = now() - make_interval(mins => $2), claimed_by = $3,
             claim_token = nextval('damascus.claim_tokens')
         WHERE id = $1 RETURNING claim_token",
        &[&id, &minutes_ago, &by],
    )
    .unwrap()
    .get(0)
}

/// The SQLSTATE and message of a failed statement.
pub fn db_error(e: &postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// Makes the phase transaction of tickets titled `title` raise an ERROR, as a failing phase would:
/// a trigger on the cycle row the phase transaction inserts.
pub fn arm_phase_failure(c: &mut Client, title: &str) {
    c.batch_execute(&format!(
        "CREATE FUNCTION public.explode() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF (SELECT title FROM damascus.tickets WHERE id = NEW.ticket_id) = '{}' THEN
             RAISE EXCEPTION 'boom: injected phase failure';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER explode BEFORE INSERT ON damascus.cycles
         FOR EACH ROW WHEN (NEW.verdict IS NULL) EXECUTE FUNCTION public.explode();",
        title.replace('\'', "''")
    ))
    .unwrap();
}

pub fn disarm_phase_failure(c: &mut Client) {
    c.batch_execute("DROP TRIGGER explode ON damascus.cycles; DROP FUNCTION public.explode();")
        .unwrap();
}

/// Starts `SELECT * FROM damascus_tick()` on its own connection and returns once its phase
/// transaction has committed for ticket `id` (the LLM call is then in flight).
pub fn tick_in_background(id: i64) -> std::thread::JoinHandle<Option<TickRow>> {
    let handle = std::thread::spawn(|| tick(&mut client()));
    let mut c = client();
    wait_for("the tick's phase to start", Duration::from_secs(10), || {
        cycles(&mut c, id).first().map(|_| ())
    });
    handle
}

/// Moves a live claim's `claimed_at` back, as if its holder had been silent that long.
pub fn age_claim(c: &mut Client, id: i64, minutes: i32) {
    c.execute(
        "UPDATE damascus.tickets SET claimed_at = now() - make_interval(mins => $2) WHERE id = $1",
        &[&id, &minutes],
    )
    .unwrap();
}

/// A setting changed with `ALTER SYSTEM` for one test, put back to the value it had when the guard drops,
/// even if the test fails. (Not `ALTER SYSTEM RESET`: pgrx-tests writes the boot settings, such as the
/// test API key, into postgresql.auto.conf too, and a reset would drop them.)
pub struct ConfGuard {
    name: &'static str,
    before: String,
}

pub fn set_conf_for_test(name: &'static str, value: &str) -> ConfGuard {
    // The raw value ("30", not "30min"), as set_conf compares it.
    let before: String = client()
        .query_one(
            "SELECT coalesce((SELECT setting FROM pg_settings WHERE name = $1), current_setting($1))",
            &[&name],
        )
        .unwrap()
        .get(0);
    set_conf(name, value);
    ConfGuard { name, before }
}

impl Drop for ConfGuard {
    fn drop(&mut self) {
        set_conf(self.name, &self.before);
    }
}

/// Restores `damascus.phases` as it was when the guard was made, so a test that rearranges the pipeline
/// leaves the default one to the next test even when it fails.
pub struct PhasesGuard(String);

pub fn keep_phases() -> PhasesGuard {
    let rows: String = client()
        .query_one(
            "SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]')::text FROM damascus.phases AS p",
            &[],
        )
        .unwrap()
        .get(0);
    PhasesGuard(rows)
}

impl Drop for PhasesGuard {
    fn drop(&mut self) {
        let mut c = client();
        let mut tx = c.transaction().unwrap();
        tx.batch_execute("DELETE FROM damascus.phases").unwrap();
        tx.execute(
            "INSERT INTO damascus.phases SELECT * FROM jsonb_populate_recordset(NULL::damascus.phases, $1::text::jsonb)",
            &[&self.0],
        )
        .unwrap();
        tx.commit().unwrap();
    }
}

/// A fingerprint of the whole phases table, to show a refused change left it as it was.
pub fn phases_fingerprint(c: &mut Client) -> String {
    c.query_one(
        "SELECT md5(string_agg(p::text, '|' ORDER BY p.name)) FROM damascus.phases AS p",
        &[],
    )
    .unwrap()
    .get(0)
}

/// The ticket's accepted output of `phase`.
pub fn output(c: &mut Client, id: i64, phase: &str) -> Option<String> {
    c.query_one(
        "SELECT outputs->>$2 FROM damascus.tickets WHERE id = $1",
        &[&id, &phase],
    )
    .unwrap()
    .get(0)
}

/// Ticks until nothing is claimable (at most `limit` times) and returns every row.
pub fn tick_until_idle(c: &mut Client, limit: usize) -> Vec<TickRow> {
    let mut rows = Vec::new();
    for _ in 0..limit {
        match tick(c) {
            Some(r) => rows.push(r),
            None => return rows,
        }
    }
    panic!("still claimable after {limit} ticks: {rows:?}");
}

/// The user message text of a recorded request in either wire format.
pub fn user_text(r: &fakellm::RecordedRequest) -> String {
    let body = r.body.as_ref().expect("a JSON request body");
    let messages = body["messages"].as_array().expect("messages");
    messages
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The system prompt of a recorded request in either wire format.
pub fn system_text(r: &fakellm::RecordedRequest) -> String {
    let body = r.body.as_ref().expect("a JSON request body");
    if let Some(s) = body["system"].as_str() {
        return s.to_string();
    }
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pid of static worker 1, once it is up.
pub fn worker_pid(c: &mut Client) -> i32 {
    wait_for("the static worker", Duration::from_secs(30), || {
        c.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'damascus worker' AND application_name = 'damascus worker 1'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
    })
}

/// The number of tickets in `state`.
pub fn tickets_in(c: &mut Client, state: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM damascus.tickets WHERE state = $1",
        &[&state],
    )
    .unwrap()
    .get(0)
}

/// Waits until exactly `n` tickets are in `state`.
pub fn wait_tickets_in(c: &mut Client, state: &str, n: i64, timeout: Duration) {
    wait_for(&format!("{n} tickets {state}"), timeout, || {
        (tickets_in(c, state) == n).then_some(())
    });
}

/// The API key for one test, put back to `restore` (the cluster's boot key) however the test ends: its
/// value never shows, so unlike `ConfGuard` this guard cannot read the previous one.
pub struct ApiKeyGuard {
    restore: &'static str,
}

impl ApiKeyGuard {
    pub fn set(key: &str, restore: &'static str) -> ApiKeyGuard {
        set_conf("damascus.llm_api_key", key);
        ApiKeyGuard { restore }
    }
}

impl Drop for ApiKeyGuard {
    fn drop(&mut self) {
        set_conf("damascus.llm_api_key", self.restore);
    }
}

/// Boots the binary's cluster with pg_cron preloaded for `pgrx_tests`, running its jobs in background workers
/// or over libpq connections, and no static damascus worker: pg_cron is all that runs cycles.
pub fn boot_with_pg_cron(background_workers: bool) {
    boot(vec![
        "shared_preload_libraries = 'damascus,pg_cron'",
        "damascus.workers = 0",
        "damascus.llm_api_key = 'sk-fake'",
        "cron.database_name = 'pgrx_tests'",
        "cron.host = '127.0.0.1'",
        if background_workers {
            "cron.use_background_workers = on"
        } else {
            "cron.use_background_workers = off"
        },
    ]);
}

/// Schedules `command` with pg_cron every minute (1.4 has minute granularity) and waits for one run to take a
/// ticket to `state` in `cycles` cycles (`damascus_tick(10, 50)` runs cycles one after another within the
/// minute). The binary's cluster preloads pg_cron, in the mode the caller chose.
pub fn assert_pg_cron_moves_a_ticket(command: &str, state: &str, cycles_run: usize) {
    fresh(Behavior::Good);
    let mut c = client();
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        .unwrap();
    let id = submit(&mut c, "Scheduled", "Runs from pg_cron");
    let job: i64 = c
        .query_one(
            "SELECT cron.schedule('damascus-tick', '* * * * *', $1)",
            &[&command],
        )
        .unwrap()
        .get(0);
    // pg_cron 1.4 fires on minute boundaries: allow a little over one minute.
    wait_for(
        &format!("pg_cron's tick to take the ticket to {state}"),
        Duration::from_secs(80),
        || (ticket(&mut c, id).state == state).then_some(()),
    );
    // The job's own row turns `succeeded` once damascus_tick() has returned to pg_cron.
    wait_for("the job run to succeed", Duration::from_secs(10), || {
        let status: Option<String> = c
            .query_opt(
                "SELECT status FROM cron.job_run_details WHERE jobid = $1 ORDER BY runid LIMIT 1",
                &[&job],
            )
            .unwrap()
            .map(|r| r.get(0));
        match status.as_deref() {
            Some("succeeded") => Some(()),
            Some("failed") => panic!("the pg_cron run failed"),
            _ => None,
        }
    });
    let done = cycles(&mut c, id);
    assert_eq!(done.len(), cycles_run, "{done:?}");
    assert!(done.iter().all(|y| y.worker.starts_with("damascus tick")));
    c.execute("SELECT cron.unschedule($1::bigint)", &[&job])
        .unwrap();
}

/// The single number `sql` returns.
pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// Sends refine_spec's accepted tickets straight to done (so each ticket is one call) until the guard drops.
pub fn refine_spec_only(c: &mut Client) -> PhasesGuard {
    let guard = keep_phases();
    c.batch_execute(
        "UPDATE damascus.phases SET transitions = '{\"spec_ok\": \"done\"}' WHERE name = 'refine_spec'",
    )
    .unwrap();
    guard
}

/// Waits until the claim on `id` is given back (a stopped call), within 5 s of `since`, and checks its cycle
/// says interrupted.
pub fn assert_claim_given_back(c: &mut Client, id: i64, since: Instant) {
    wait_for(
        "the claim to be given back",
        Duration::from_secs(15),
        || (!ticket(c, id).claimed).then_some(()),
    );
    assert!(
        since.elapsed() < Duration::from_secs(5),
        "{:?}",
        since.elapsed()
    );
    assert_eq!(cycles(c, id)[0].verdict.as_deref(), Some("interrupted"));
}
