//! Worker sessions are hardened against what users and other sessions can do to them: a search_path set on
//! the database, a lock held by someone else (even by the tick's own caller), a transaction that runs too
//! long, a caller that goes away mid-call, and bad input to `damascus_submit`. Each fault is injected into a
//! real Postgres 15 with the stand-in LLM over 127.0.0.1.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn setup() -> std::sync::MutexGuard<'static, ()> {
    let guard = serial();
    boot(vec![
        "shared_preload_libraries = 'damascus'",
        "damascus.workers = 0",
        "damascus.llm_api_key = 'sk-fake'",
    ]);
    guard
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
    wait_for(
        "the claim to be given back",
        Duration::from_secs(10),
        || (!ticket(&mut c, id).claimed).then_some(()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        cycles(&mut c, id)[0].verdict.as_deref(),
        Some("interrupted")
    );
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
