//! damascus: an LLM work pipeline inside PostgreSQL; this file lists the modules, loads the SQL and registers settings and workers at load time.

use pgrx::prelude::*;

pgrx::pg_module_magic!(name, version);

pub mod api;
pub mod cycle;
pub mod error;
pub mod guc;
pub mod shared;
pub mod signals;
pub mod store;
pub mod tick;
pub mod worker;

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    // SAFETY: a plain read of a postmaster flag on the main thread during library load.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        shared::init_preloaded();
        worker::register_static_workers();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Lets the integration tests in `tests/` boot the test cluster through pgrx-tests.
    #[pg_extern]
    fn ready() -> bool {
        true
    }

    #[pg_test]
    fn submit_returns_increasing_ids_and_stores_a_new_ticket() {
        let a = Spi::get_one::<i64>(
            "SELECT damascus_submit('Add a health endpoint', 'GET /healthz returns 200')",
        )
        .unwrap()
        .unwrap();
        let b = Spi::get_one::<i64>("SELECT damascus_submit('  Second  ', 'b', 5)")
            .unwrap()
            .unwrap();
        assert!(b > a);
        let (state, title) = Spi::get_two_with_args::<String, String>(
            "SELECT state, title FROM damascus.tickets WHERE id = $1",
            &[b.into()],
        )
        .unwrap();
        assert_eq!(state.as_deref(), Some("new"));
        assert_eq!(title.as_deref(), Some("Second"));
    }

    #[pg_test]
    fn every_damascus_object_has_a_comment() {
        let missing = Spi::get_one::<String>(
            "SELECT string_agg(what, ', ') FROM (
               SELECT format('%s.%s', c.relname, a.attname) AS what
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'damascus' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
                 AND col_description(c.oid, a.attnum) IS NULL
               UNION ALL
               SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'damascus' AND obj_description(c.oid, 'pg_class') IS NULL
                 AND c.relkind IN ('r', 'S', 'i', 'v') AND c.relname NOT LIKE '%_pkey'
                 AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i')
               UNION ALL
               SELECT p.oid::regprocedure::text FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'damascus'
               WHERE obj_description(p.oid, 'pg_proc') IS NULL
                 AND p.pronamespace::regnamespace::text <> 'tests' -- pgrx's own test functions
               UNION ALL
               SELECT format('%s on %s', t.tgname, t.tgrelid::regclass) FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'damascus' AND NOT t.tgisinternal AND obj_description(t.oid, 'pg_trigger') IS NULL
             ) gaps",
        )
        .unwrap();
        assert_eq!(missing, None, "objects without COMMENT ON");
    }

    #[pg_test]
    fn the_sql_functions_are_not_granted_to_public() {
        // Every function of the extension, whatever its schema, so a new one cannot be forgotten.
        let granted = Spi::get_one::<String>(
            "SELECT string_agg(p.oid::regprocedure::text, ', ')
             FROM pg_proc p
             JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'damascus'
             WHERE has_function_privilege('public', p.oid, 'EXECUTE')
               AND p.pronamespace::regnamespace::text <> 'tests'",
        )
        .unwrap();
        assert_eq!(granted, None, "functions PUBLIC may execute");
        let count = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
             WHERE e.extname = 'damascus' AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'",
        )
        .unwrap();
        assert!(
            count.unwrap_or(0) >= 10,
            "the check saw the functions: {count:?}"
        );
    }

    #[pg_test(error = "invalid ticket: title is empty")]
    fn submit_refuses_a_blank_title() {
        Spi::run("SELECT damascus_submit('   ', 'body')").unwrap();
    }

    #[pg_test(error = "title must not be NULL")]
    fn submit_refuses_a_null_title() {
        Spi::run("SELECT damascus_submit(NULL, 'body')").unwrap();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'damascus'",
            "damascus.workers = 0",
        ]
    }
}
