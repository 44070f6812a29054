//! `SELECT damascus_tick()` scheduled by pg_cron (Debian's postgresql-15-cron, minute granularity) moves a ticket.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn pg_cron_runs_damascus_tick() {
    let _g = serial();
    boot(vec![
        "shared_preload_libraries = 'damascus,pg_cron'",
        "damascus.workers = 0",
        "damascus.llm_api_key = 'sk-fake'",
        "cron.database_name = 'pgrx_tests'",
        "cron.use_background_workers = on",
    ]);
    fresh(Behavior::Good);
    let mut c = client();
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        .unwrap();
    let id = submit(&mut c, "Scheduled", "Runs from pg_cron");
    let job: i64 = c
        .query_one(
            "SELECT cron.schedule('damascus-tick', '* * * * *', 'SELECT damascus_tick()')",
            &[],
        )
        .unwrap()
        .get(0);
    // pg_cron 1.4 fires on minute boundaries: allow a little over one minute.
    wait_for(
        "pg_cron's tick to specify the ticket",
        Duration::from_secs(80),
        || (ticket(&mut c, id).state == "specified").then_some(()),
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
    assert!(cycles(&mut c, id)[0].worker.starts_with("damascus tick"));
    c.execute("SELECT cron.unschedule($1::bigint)", &[&job])
        .unwrap();
}
