//! The 0.1.0 -> 0.2.0 upgrade on a real server: a database created at 0.1.0 keeps its tickets through
//! `ALTER EXTENSION damascus UPDATE`, its claimed ticket still completes, the new library refuses to tick on the
//! old schema with a hint that names the update, and the upgraded schema equals a fresh 0.2.0 install.

mod common;

use common::*;
use std::collections::BTreeSet;

fn setup() -> std::sync::MutexGuard<'static, ()> {
    setup_ticks(&[])
}

/// A connection to another database of the test cluster, as the same user.
fn connect(db: &str) -> Client {
    let mut c = client();
    let port: String = c.query_one("SHOW port", &[]).unwrap().get(0);
    let user: String = c
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    postgres::Config::new()
        .host("localhost")
        .port(port.parse().unwrap())
        .user(&user)
        .dbname(db)
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

/// A database of its own for one test, dropped when the guard drops, even if the test fails.
struct ScratchDatabase(&'static str);

fn scratch_database(name: &'static str) -> ScratchDatabase {
    let mut c = client();
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    ScratchDatabase(name)
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // One statement per call: DROP DATABASE cannot run inside the implicit transaction of a batch.
        let _ = client().batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

/// Everything an install defines, one line per fact, so two databases can be compared: relations, columns with
/// types and defaults, constraints, indexes, sequences, functions (full definitions, which include SECURITY
/// DEFINER and search_path), triggers, comments, grants, extension membership and the seeded phases.
fn schema_facts(c: &mut Client) -> BTreeSet<String> {
    let sql = r#"
    WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'damascus'),
    members AS (
        -- pgrx's test builds add a `tests` schema of test functions to every install; they are no part of it.
        SELECT d.classid, d.objid FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass
          AND d.refobjid = ext.oid AND d.deptype = 'e'
          AND NOT (d.classid = 'pg_proc'::regclass
                   AND (SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                        WHERE p.oid = d.objid) = 'tests')
          AND NOT (d.classid = 'pg_namespace'::regclass
                   AND (SELECT nspname FROM pg_namespace WHERE oid = d.objid) = 'tests')
    ),
    rels AS (
        SELECT c.oid, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'damascus'
    )
    SELECT 'member ' || pg_describe_object(classid, objid, 0) FROM members
    UNION ALL
    SELECT format('relation %s kind %s acl %s comment %s', relname, relkind,
                  (SELECT relacl FROM pg_class WHERE oid = rels.oid), obj_description(oid, 'pg_class'))
    FROM rels
    UNION ALL
    SELECT format('column %s.%s %s notnull %s default %s identity %s comment %s', r.relname, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                  a.attidentity, col_description(r.oid, a.attnum))
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = r.oid AND d.adnum = a.attnum
    WHERE r.relkind IN ('r', 'v')
    UNION ALL
    SELECT format('constraint %s.%s %s deferrable %s deferred %s comment %s', r.relname, k.conname,
                  pg_get_constraintdef(k.oid), k.condeferrable, k.condeferred, obj_description(k.oid, 'pg_constraint'))
    FROM pg_constraint k JOIN rels r ON r.oid = k.conrelid
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels r ON r.oid = i.indrelid
    UNION ALL
    SELECT format('sequence %s %s %s %s %s', s.sequencename, s.data_type, s.start_value, s.increment_by, s.cycle)
    FROM pg_sequences s WHERE s.schemaname = 'damascus'
    UNION ALL
    SELECT format('function %s acl %s comment %s', pg_get_functiondef(p.oid), p.proacl, obj_description(p.oid, 'pg_proc'))
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT format('trigger %s enabled %s', pg_get_triggerdef(t.oid), t.tgenabled)
    FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('schema acl %s comment %s', n.nspacl, obj_description(n.oid, 'pg_namespace'))
    FROM pg_namespace n WHERE n.nspname = 'damascus'
    UNION ALL
    SELECT 'phase ' || (to_jsonb(p) - 'updated_at')::text FROM damascus.phases p
    "#;
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            r.get::<_, Option<String>>(0)
                .unwrap_or_else(|| "NULL line".into())
        })
        .collect()
}

fn extversion(c: &mut Client) -> String {
    c.query_one(
        "SELECT extversion FROM pg_extension WHERE extname = 'damascus'",
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn upgrading_from_0_1_0_keeps_the_data_completes_the_claim_and_equals_a_fresh_install() {
    let _g = setup();
    fresh(Behavior::Good);
    let _upgraded_db = scratch_database("damascus_upgraded");
    let _fresh_db = scratch_database("damascus_fresh");

    let mut old = connect("damascus_upgraded");
    old.batch_execute("CREATE EXTENSION damascus VERSION '0.1.0'")
        .expect("the 0.1.0 install script is installed (make test copies sql/damascus--0.1.0.sql)");
    assert_eq!(extversion(&mut old), "0.1.0");

    // Tickets as a 0.1 deployment leaves them: waiting, specified (refine_spec done), and one claimed by a
    // worker that was running when the server was restarted with the new library.
    let waiting = submit(&mut old, "Waiting ticket", "still new");
    let specified = submit(&mut old, "Specified ticket", "already refined");
    let claimed = submit(&mut old, "Claimed ticket", "claimed before the upgrade");
    let spec = fakellm::good_spec("Ticket: Specified ticket");
    old.execute(
        "UPDATE damascus.tickets SET state = 'specified', outputs = jsonb_build_object('refine_spec', $2::text),
                last_verdict = 'spec_ok' WHERE id = $1",
        &[&specified, &spec],
    )
    .unwrap();
    old.execute(
        "UPDATE damascus.tickets SET claimed_at = now() - interval '40 minutes', claimed_by = 'damascus worker 1 (pid 1)',
                claim_token = nextval('damascus.claim_tokens') WHERE id = $1",
        &[&claimed],
    )
    .unwrap();
    let before: Vec<(i64, String, String, String)> = old
        .query(
            "SELECT id, title, body, state FROM damascus.tickets ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();

    // The 0.2 library on the 0.1.0 schema: a tick refuses at once and names the fix.
    let err = old.query("SELECT * FROM damascus_tick()", &[]).unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "55000", "{db:?}");
    assert!(
        db.hint()
            .unwrap_or_default()
            .contains("ALTER EXTENSION damascus UPDATE"),
        "{db:?}"
    );
    assert_eq!(
        ticket(&mut old, waiting).state,
        "new",
        "nothing was touched"
    );

    old.batch_execute("ALTER EXTENSION damascus UPDATE")
        .unwrap();
    assert_eq!(extversion(&mut old), "0.2.0");

    let after: Vec<(i64, String, String, String)> = old
        .query(
            "SELECT id, title, body, state FROM damascus.tickets ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(after, before, "every ticket survives the update as it was");
    assert_eq!(output(&mut old, specified, "refine_spec"), Some(spec));

    // Work resumes with no restart; the stale claim is taken over and every ticket completes.
    let rows = tick_until_idle(&mut old, 20);
    for id in [waiting, specified, claimed] {
        let t = ticket(&mut old, id);
        assert_eq!(t.state, "done", "ticket {id}: {t:?} after {rows:?}");
    }
    assert!(rows.iter().any(|r| r.ticket_id == claimed));
    assert_eq!(
        rows.iter().filter(|r| r.ticket_id == specified).count(),
        2,
        "the specified ticket went on at implement, not from the start"
    );

    let mut new = connect("damascus_fresh");
    new.batch_execute("CREATE EXTENSION damascus").unwrap();
    assert_eq!(extversion(&mut new), "0.2.0");
    let upgraded = schema_facts(&mut old);
    let installed = schema_facts(&mut new);
    let only_upgraded: Vec<_> = upgraded.difference(&installed).collect();
    let only_fresh: Vec<_> = installed.difference(&upgraded).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "the upgraded schema differs from a fresh install.\nonly after the upgrade:\n{only_upgraded:#?}\nonly in a fresh install:\n{only_fresh:#?}"
    );
    assert!(
        installed.len() > 100,
        "the comparison saw the schema: {}",
        installed.len()
    );
}
