//! Worker sessions are hardened against what users and other sessions can do to them: a search_path set on
//! the database, a lock held by someone else (even by the tick's own caller), a transaction that runs too
//! long, a caller that goes away mid-call, and bad input to `damascus_submit`. Each fault is injected into a
//! real Postgres 15 with the stand-in LLM over 127.0.0.1.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn setup() -> std::sync::MutexGuard<'static, ()> {
    setup_ticks(&[])
}

/// Runs SQL that undoes what a test planted, however the test ends.
struct Undo(&'static str);

impl Drop for Undo {
    fn drop(&mut self) {
        if let Err(e) = client().batch_execute(self.0) {
            eprintln!("could not undo ({}): {e}", self.0);
        }
    }
}

fn detail_of(e: &postgres::Error) -> String {
    e.as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_string()
}

/// A search_path set on the database (here one that puts a planted `now()` before pg_catalog) reaches every
/// new session, but not the worker's statements: the tick still runs its cycle.
#[test]
fn a_search_path_set_on_the_database_never_reaches_the_worker() {
    let _g = setup();
    fresh(Behavior::Good);
    // Connected before the database setting, so this session keeps the ordinary search_path.
    let mut c = client();
    let _undo =
        Undo("ALTER DATABASE pgrx_tests RESET search_path; DROP SCHEMA IF EXISTS planted CASCADE");
    c.batch_execute(
        "CREATE SCHEMA planted;
         CREATE FUNCTION planted.now() RETURNS timestamptz LANGUAGE plpgsql
             AS $$ BEGIN RAISE EXCEPTION 'the planted now() ran'; END $$;
         GRANT USAGE ON SCHEMA planted TO PUBLIC;
         ALTER DATABASE pgrx_tests SET search_path = planted, pg_catalog, public",
    )
    .unwrap();
    let err = client()
        .query_one("SELECT now()", &[])
        .expect_err("a new session resolves now() to the planted function");
    assert!(db_error(&err).1.contains("the planted now() ran"));
    let id = submit(&mut c, "Pinned search_path", "body");
    let row = tick(&mut c).expect("the tick worker claims with its own search_path");
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "spec_ok"));
}

/// `BEGIN; LOCK damascus.tickets; SELECT damascus_tick();` would wait forever (the caller waits for the
/// worker, the worker for the caller's lock, and no deadlock detector sees it): the worker's statement gives
/// up at damascus.lock_timeout and the tick is an error.
#[test]
fn a_tick_blocked_by_its_callers_own_lock_fails_within_the_lock_timeout() {
    let _g = setup();
    fresh(Behavior::Good);
    let _lock = set_conf_for_test("damascus.lock_timeout", "300");
    let mut c = client();
    let id = submit(&mut c, "Locked out", "body");
    // A bound on the test itself, should the worker wait after all.
    c.batch_execute("BEGIN; SET LOCAL statement_timeout = '20s'; LOCK TABLE damascus.tickets")
        .unwrap();
    let started = Instant::now();
    let err = c
        .query("SELECT * FROM damascus_tick()", &[])
        .expect_err("the tick cannot claim");
    let took = started.elapsed();
    c.batch_execute("ROLLBACK").unwrap();
    assert!(
        detail_of(&err).contains("lock timeout"),
        "{err:?}: {}",
        detail_of(&err)
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!ticket(&mut c, id).claimed, "nothing was claimed");
    assert_eq!(tick(&mut c).map(|r| r.ticket_id), Some(id));
}

/// A ticket row someone holds with `SELECT … FOR UPDATE` is skipped, not waited for.
#[test]
fn a_ticket_row_locked_by_someone_else_is_skipped() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let id = submit(&mut c, "Held by psql", "body");
    let mut holder = client();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM damascus.tickets WHERE id = {id} FOR UPDATE"
        ))
        .unwrap();
    let started = Instant::now();
    assert_eq!(tick(&mut c), None, "the locked ticket is skipped");
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(tick(&mut c).map(|r| r.ticket_id), Some(id));
}

/// A worker transaction that runs past damascus.statement_timeout (here a slow trigger on the cycle row the
/// phase transaction inserts) is cancelled, and the cycle ends as an error that says so.
#[test]
fn a_worker_transaction_past_the_statement_timeout_is_cancelled_and_recorded() {
    let _g = setup();
    fresh(Behavior::Good);
    let _timeout = set_conf_for_test("damascus.statement_timeout", "300");
    let mut c = client();
    let _undo = Undo(
        "DROP TRIGGER IF EXISTS crawl ON damascus.cycles; DROP FUNCTION IF EXISTS public.crawl()",
    );
    c.batch_execute(
        "CREATE FUNCTION public.crawl() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$;
         CREATE TRIGGER crawl BEFORE INSERT ON damascus.cycles
         FOR EACH ROW WHEN (NEW.verdict IS NULL) EXECUTE FUNCTION public.crawl();",
    )
    .unwrap();
    let id = submit(&mut c, "Slow phase", "body");
    let started = Instant::now();
    let row = tick(&mut c).expect("the tick claimed");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "error"));
    let t = ticket(&mut c, id);
    assert!(
        t.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("statement timeout"),
        "{t:?}"
    );
}

/// A tick is tied to its caller: terminate the calling backend during the LLM call and the tick worker stops
/// the call and gives the claim back within seconds, instead of running on for nobody.
#[test]
fn a_tick_whose_caller_is_terminated_gives_its_claim_back() {
    let _g = setup();
    let llm = fresh(Behavior::Hang);
    let mut c = client();
    let id = submit(&mut c, "Orphaned tick", "body");
    let (tx, rx) = std::sync::mpsc::channel();
    let caller = std::thread::spawn(move || {
        let mut caller = client();
        let pid: i32 = caller
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        tx.send(pid).unwrap();
        caller
            .query("SELECT * FROM damascus_tick()", &[])
            .map(|_| ())
    });
    let caller_pid = rx.recv().unwrap();
    wait_for("the call to be in flight", Duration::from_secs(10), || {
        cycles(&mut c, id).first().map(|_| ())
    });
    c.query_one("SELECT pg_terminate_backend($1)", &[&caller_pid])
        .unwrap();
    let started = Instant::now();
    assert!(caller.join().unwrap().is_err(), "the caller was terminated");
    assert_claim_given_back(&mut c, id, started);
    llm.set_behavior(Behavior::Good);
}

/// A tick is tied to its caller's client too: with `client_connection_check_interval` set, a client that
/// disappears mid-call (psql killed with SIGKILL, its socket closed by the kernel) is noticed by the caller,
/// which exits, and the tick worker then stops the call and gives the claim back.
#[test]
fn a_tick_whose_client_disconnects_gives_its_claim_back() {
    let _g = setup();
    let llm = fresh(Behavior::Hang);
    let mut c = client();
    let id = submit(&mut c, "Client gone", "body");
    let r = c
        .query_one(
            "SELECT current_setting('port'), current_user::text, current_database()::text",
            &[],
        )
        .unwrap();
    let (port, user, db): (String, String, String) = (r.get(0), r.get(1), r.get(2));
    let mut psql = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            &user,
            "-d",
            &db,
        ])
        .args(["-c", "SET client_connection_check_interval = '500ms'"])
        .args(["-c", "SELECT * FROM damascus_tick()"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql runs");
    wait_for("the call to be in flight", Duration::from_secs(10), || {
        cycles(&mut c, id).first().map(|_| ())
    });
    psql.kill().unwrap();
    psql.wait().unwrap();
    assert_claim_given_back(&mut c, id, Instant::now());
    llm.set_behavior(Behavior::Good);
}

/// NULL, blank, oversized and invalidly encoded bodies are refused with a SQLSTATE and nothing is written.
#[test]
fn submit_refuses_null_blank_oversized_and_invalid_bodies() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    c.batch_execute("SET damascus.max_body_bytes = 100")
        .unwrap();
    for (sql, code) in [
        ("SELECT damascus_submit('t', NULL)", "22004"),
        ("SELECT damascus_submit('t', ' \n ')", "22023"),
        ("SELECT damascus_submit('t', repeat('x', 101))", "22023"),
        ("SELECT damascus_submit('t', repeat('é', 51))", "22023"),
        ("SELECT damascus_submit('t', E'\\xff')", "22021"),
    ] {
        let err = c.query(sql, &[]).unwrap_err();
        assert_eq!(db_error(&err).0, code, "{sql}: {err:?}");
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM damascus.tickets", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing written");
    // Exactly at the limit, counted in bytes ('é' is two).
    c.query_one("SELECT damascus_submit('t', repeat('é', 50))", &[])
        .unwrap();
}

/// Runs `sql` as `role` (SET ROLE in this superuser session) and gives the SQLSTATE of a refusal.
fn as_role(c: &mut Client, role: &str, sql: &str) -> Result<(), String> {
    c.batch_execute(&format!("SET ROLE {role}")).unwrap();
    let result = c.batch_execute(sql).map_err(|e| db_error(&e).0);
    c.batch_execute("RESET ROLE").unwrap();
    result
}

/// PUBLIC gets nothing; damascus_user may submit, read tickets and cycles, and cancel; damascus_admin may
/// also change phases, tick, retry, release, approve and reject.
#[test]
fn roles_grant_each_what_it_may_do_and_public_nothing() {
    let _g = setup();
    fresh(Behavior::Good);
    let mut c = client();
    let _undo = Undo(
        "DROP ROLE IF EXISTS damascus_test_nobody; DROP ROLE IF EXISTS damascus_test_user;
         DROP ROLE IF EXISTS damascus_test_admin",
    );
    c.batch_execute(
        "CREATE ROLE damascus_test_nobody; CREATE ROLE damascus_test_user IN ROLE damascus_user;
         CREATE ROLE damascus_test_admin IN ROLE damascus_admin",
    )
    .unwrap();
    let id = submit(&mut c, "Owned by the tests", "body");
    // Held by someone, so releasing it is a move the ticket allows (and no tick takes it meanwhile).
    c.execute(
        "UPDATE damascus.tickets SET claimed_at = now(), claimed_by = 'someone',
                claim_token = nextval('damascus.claim_tokens') WHERE id = $1",
        &[&id],
    )
    .unwrap();
    let user_may = [
        "SELECT damascus_submit('From a user', 'body')".to_string(),
        "SELECT count(*) FROM damascus.tickets".to_string(),
        "SELECT count(*) FROM damascus.cycles".to_string(),
        "SELECT count(*) FROM damascus.phases".to_string(),
    ];
    let admin_may = [
        "UPDATE damascus.phases SET max_attempts = max_attempts WHERE name = 'implement'"
            .to_string(),
        "SELECT * FROM damascus_tick()".to_string(),
        format!("SELECT damascus_release({id})"),
    ];
    for sql in user_may.iter().chain(&admin_may) {
        assert_eq!(
            as_role(&mut c, "damascus_test_nobody", sql),
            Err("42501".to_string()),
            "PUBLIC: {sql}"
        );
    }
    for sql in &user_may {
        assert_eq!(as_role(&mut c, "damascus_test_user", sql), Ok(()), "{sql}");
        assert_eq!(as_role(&mut c, "damascus_test_admin", sql), Ok(()), "{sql}");
    }
    for sql in &admin_may {
        assert_eq!(
            as_role(&mut c, "damascus_test_user", sql),
            Err("42501".to_string()),
            "damascus_user: {sql}"
        );
        assert_eq!(as_role(&mut c, "damascus_test_admin", sql), Ok(()), "{sql}");
    }
    // Granted, though the ticket is in no state for them: refused for that reason, not for privilege.
    for sql in [
        format!("SELECT damascus_retry({id})"),
        format!("SELECT damascus_approve({id}, 'ok')"),
        format!("SELECT damascus_reject({id}, 'no')"),
    ] {
        assert_eq!(
            as_role(&mut c, "damascus_test_user", &sql),
            Err("42501".to_string()),
            "damascus_user: {sql}"
        );
        assert_eq!(
            as_role(&mut c, "damascus_test_admin", &sql),
            Err("55000".to_string()),
            "damascus_admin: {sql}"
        );
    }
    assert_eq!(
        as_role(
            &mut c,
            "damascus_test_user",
            &format!("SELECT damascus_cancel({id})")
        ),
        Ok(())
    );
    assert_eq!(ticket(&mut c, id).state, "cancelled");
}

/// Settings that would break the worker are refused when set, with a message that says what is allowed.
#[test]
fn settings_the_worker_cannot_use_are_refused_when_set() {
    let _g = setup();
    let mut c = client();
    let refused = |c: &mut Client, sql: &str| -> (String, String) {
        let e = c.batch_execute(sql).unwrap_err();
        let (code, _) = db_error(&e);
        (code, detail_of(&e))
    };
    for url in [
        "ftp://example.com",
        "api.anthropic.com",
        "https://h/?x=1",
        "",
    ] {
        let (code, detail) = refused(
            &mut c,
            &format!("ALTER SYSTEM SET damascus.llm_url = '{url}'"),
        );
        assert_eq!(code, "22023", "{url}");
        assert!(
            detail.contains("must be an http:// or https:// URL"),
            "{url}: {detail}"
        );
    }
    // The stale window is 30 minutes here: a heartbeat as long is refused, and so is a window below it.
    let (code, detail) = refused(&mut c, "ALTER SYSTEM SET damascus.heartbeat_seconds = 3600");
    assert_eq!(code, "22023");
    assert!(
        detail.contains("must be below the stale window"),
        "{detail}"
    );
    let (code, _) = refused(&mut c, "ALTER SYSTEM SET damascus.stale_claim_minutes = 0");
    assert_eq!(code, "22023");
    for (name, value) in [
        ("damascus.lock_timeout", "0"),
        ("damascus.statement_timeout", "-1"),
        ("damascus.llm_timeout", "0"),
        ("damascus.llm_provider", "'bard'"),
    ] {
        let (code, _) = refused(&mut c, &format!("ALTER SYSTEM SET {name} = {value}"));
        assert_eq!(code, "22023", "{name} = {value}");
    }
    let auto_conf: String = c
        .query_one(
            "SELECT pg_read_file(current_setting('data_directory') || '/postgresql.auto.conf')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        !auto_conf.contains("ftp://") && !auto_conf.contains("heartbeat_seconds"),
        "nothing refused was written: {auto_conf}"
    );
}

/// The API key never shows: not to SHOW, current_setting() or pg_settings, not even for roles that may
/// read every setting. A key in damascus.llm_api_key_file (read by the server) is what the LLM receives.
#[test]
fn the_api_key_is_never_shown_and_can_come_from_a_file() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    let key_file = "/tmp/damascus-test-api-key";
    std::fs::write(key_file, "sk-from-the-file\n").unwrap();
    std::process::Command::new("chown")
        .args(["postgres", key_file])
        .status()
        .unwrap();
    let _file = set_conf_for_test("damascus.llm_api_key_file", key_file);
    let _undo = Undo("DROP ROLE IF EXISTS damascus_test_monitor");
    c.batch_execute("CREATE ROLE damascus_test_monitor IN ROLE pg_read_all_settings, pg_monitor")
        .unwrap();
    for role in ["postgres", "damascus_test_monitor"] {
        c.batch_execute(&format!("SET ROLE {role}")).unwrap();
        let shown: String = c
            .query_one("SELECT current_setting('damascus.llm_api_key')", &[])
            .unwrap()
            .get(0);
        assert!(
            shown.starts_with("******** (sha256 ") && !shown.contains("sk-"),
            "{role}: {shown}"
        );
        let listed: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_settings WHERE name = 'damascus.llm_api_key' AND setting LIKE '%sk-%'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(listed, 0, "{role}");
        c.batch_execute("RESET ROLE").unwrap();
    }
    submit(&mut c, "Keyed from a file", "body");
    tick(&mut c).expect("claimed");
    assert_eq!(
        llm.requests()[0].header("x-api-key"),
        Some("sk-from-the-file")
    );
    let stored: i64 = c
        .query_one(
            "SELECT count(*) FROM damascus.cycles WHERE answer LIKE '%sk-%' OR detail LIKE '%sk-%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "no key in the cycle rows");
}

/// A ticket whose cycles keep ending without a verdict (here the verdict transaction fails every time) stops
/// being tried at the phase's max_attempts: the attempt is counted by the claim, before the call, and the error
/// that used the last one fails the ticket with that error as the reason.
#[test]
fn a_ticket_whose_verdict_always_fails_is_failed_at_max_attempts() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    let _undo = Undo(
        "DROP TRIGGER IF EXISTS refuse_verdicts ON damascus.cycles;
         DROP FUNCTION IF EXISTS public.refuse_verdicts()",
    );
    c.batch_execute(
        "CREATE FUNCTION public.refuse_verdicts() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN RAISE EXCEPTION 'poison: the verdict cannot be written'; END $$;
         CREATE TRIGGER refuse_verdicts BEFORE UPDATE ON damascus.cycles FOR EACH ROW
         WHEN (OLD.verdict IS NULL AND NEW.verdict IS DISTINCT FROM 'error')
         EXECUTE FUNCTION public.refuse_verdicts();",
    )
    .unwrap();
    let id = submit(&mut c, "Poison", "body");
    assert_poisoned(&mut c, id, "poison: the verdict cannot be written");
    assert_eq!(llm.request_count(), 3, "one call per attempt");
}

/// The same when it is the phase transaction, before the call, that fails every time: no call is ever made,
/// and the third error fails the ticket.
#[test]
fn a_ticket_whose_phase_transaction_always_fails_is_failed_at_max_attempts() {
    let _g = setup();
    let llm = fresh(Behavior::Good);
    let mut c = client();
    let _undo = Undo(
        "DROP TRIGGER IF EXISTS refuse_phases ON damascus.cycles;
         DROP FUNCTION IF EXISTS public.refuse_phases()",
    );
    c.batch_execute(
        "CREATE FUNCTION public.refuse_phases() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN RAISE EXCEPTION 'poison: the phase cannot start'; END $$;
         CREATE TRIGGER refuse_phases BEFORE INSERT ON damascus.cycles FOR EACH ROW
         WHEN (NEW.verdict IS NULL)
         EXECUTE FUNCTION public.refuse_phases();",
    )
    .unwrap();
    let id = submit(&mut c, "Poisoned phase", "body");
    assert_poisoned(&mut c, id, "poison: the phase cannot start");
    assert_eq!(llm.request_count(), 0, "no call without a phase row");
}

/// Ticks `id` through three cycles that end in `error`: the first two keep the ticket (claimed until the stale
/// window, here aged), the third fails it with the error as the reason; nothing claims it afterwards.
fn assert_poisoned(c: &mut Client, id: i64, error: &str) {
    for attempt in 1..=3 {
        let row = tick(c).expect("claimed");
        let t = ticket(c, id);
        assert_eq!(
            (row.ticket_id, row.verdict.as_str()),
            (id, "error"),
            "attempt {attempt}: {t:?}"
        );
        assert_eq!(t.attempts, attempt, "counted before the call");
        assert!(
            t.last_error.as_deref().unwrap_or_default().contains(error),
            "{t:?}"
        );
        if attempt < 3 {
            assert_eq!(
                (row.state.as_deref(), t.state.as_str()),
                (Some("new"), "new")
            );
            assert!(t.claimed, "an error keeps the claim until the stale window");
            age_claim(c, id, 60);
        } else {
            assert_eq!(
                (row.state.as_deref(), t.state.as_str()),
                (Some("failed"), "failed")
            );
            assert!(!t.claimed, "{t:?}");
            assert!(
                t.last_error
                    .as_deref()
                    .unwrap_or_default()
                    .contains("failed after 3 attempts ending without a verdict"),
                "{t:?}"
            );
        }
    }
    let errors: i64 = c
        .query_one(
            "SELECT count(*) FROM damascus.cycles WHERE ticket_id = $1 AND verdict = 'error'",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(errors, 3, "one cycle row per attempt");
    assert_eq!(tick(c), None, "a failed ticket is not tried again");
}

/// SIGTERM reaches a worker that waits for a lock inside a transaction: the wait is cancelled and the worker
/// exits within a couple of seconds, not at damascus.lock_timeout (two minutes here). The verdict it could not
/// write is not half-written: the ticket keeps its claim until the stale window and then completes.
#[test]
fn sigterm_ends_a_workers_wait_on_a_lock() {
    let _g = setup();
    let _lock = set_conf_for_test("damascus.lock_timeout", "120000");
    let llm = fresh(Behavior::Slow(Duration::from_secs(2)));
    let mut c = client();
    let id = submit(&mut c, "Terminated while waiting", "body");
    let caller = std::thread::spawn(|| {
        let started = Instant::now();
        let result = client()
            .query("SELECT * FROM damascus_tick()", &[])
            .map(|_| ());
        (result, started.elapsed())
    });
    wait_for("the call to be in flight", Duration::from_secs(10), || {
        cycles(&mut c, id).first().map(|_| ())
    });
    // The verdict will wait for this row lock once the call answers.
    let mut holder = client();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM damascus.tickets WHERE id = {id} FOR UPDATE"
        ))
        .unwrap();
    let pid: i32 = wait_for(
        "the tick worker to wait on the row lock",
        Duration::from_secs(20),
        || {
            c.query_opt(
                "SELECT pid FROM pg_stat_activity
                 WHERE application_name = 'damascus tick' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
        },
    );
    let terminated = Instant::now();
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    wait_for("the tick worker to exit", Duration::from_secs(30), || {
        c.query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .is_none()
            .then_some(())
    });
    let gone = terminated.elapsed();
    let (result, _) = caller.join().unwrap();
    holder.batch_execute("ROLLBACK").unwrap();
    assert!(
        gone < Duration::from_secs(10),
        "the worker exited {gone:?} after SIGTERM; the lock timeout is 120 s"
    );
    if let Err(e) = &result {
        panic!("the caller gets the tick's row, not an error: {e}");
    }
    let t = ticket(&mut c, id);
    assert_eq!(t.state, "new", "{t:?}");
    assert_eq!(t.spec, None, "no verdict was written");
    assert!(
        t.claimed,
        "the row was locked, so the claim waits for the stale window"
    );
    // As if the stale window had passed: the ticket completes, with one accepted verdict.
    llm.set_behavior(Behavior::Good);
    age_claim(&mut c, id, 60);
    let row = tick(&mut c).expect("claimed again");
    assert_eq!((row.ticket_id, row.verdict.as_str()), (id, "spec_ok"));
    let accepted = cycles(&mut c, id)
        .iter()
        .filter(|y| y.verdict.as_deref() == Some("spec_ok"))
        .count();
    assert_eq!(accepted, 1);
}
