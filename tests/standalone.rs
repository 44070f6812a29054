//! What needs a cluster of its own rather than the pgrx test cluster: the server log read back line by line
//! (at log_min_messages = debug1, with the API key set, reloaded and refused; the per-cycle LOG line), and a
//! hot standby on which `damascus_tick()` is refused at once. The cluster runs the same Postgres 15 and library, as `postgres`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A throwaway cluster: initdb'd in /tmp, logging to a file, stopped and removed when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

/// Runs a Postgres program as `postgres` (initdb and the server refuse root).
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command) {
    let out = c.output().expect("runs");
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    fn init(settings: &str) -> Cluster {
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("pg_config");
        let bin = PathBuf::from(String::from_utf8(bindir.stdout).unwrap().trim());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = PathBuf::from(format!("/tmp/damascus-standalone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run({
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(&dir);
            c
        });
        let cluster = Cluster { dir, port, bin };
        run({
            let mut c = as_postgres(&cluster.bin.join("initdb"));
            c.args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(cluster.data());
            c
        });
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             shared_preload_libraries = 'damascus'\ndamascus.workers = 0\n{settings}\n",
            cluster.dir.display()
        );
        let path = cluster.data().join("postgresql.conf");
        let mut all = std::fs::read_to_string(&path).unwrap();
        all.push_str(&conf);
        std::fs::write(&path, all).unwrap();
        cluster.start();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn start(&self) {
        run({
            let mut c = as_postgres(&self.bin.join("pg_ctl"));
            c.arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "start"]);
            c
        });
    }

    fn stop(&self) {
        run({
            let mut c = as_postgres(&self.bin.join("pg_ctl"));
            c.arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "stop"]);
            c
        });
    }

    fn client(&self) -> Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(postgres::NoTls)
            .expect("connect to the standalone cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The API key reaches no line of the server log at debug1: not when the configuration is reloaded with a
/// new key (Postgres logs each changed setting with its value), not in a logged statement that sets it, not
/// in the statement behind a refused SET. Then the same cluster as a hot standby refuses `damascus_tick()`
/// at once with SQLSTATE 25006.
#[test]
fn the_server_log_has_a_line_per_cycle_and_no_key_and_a_standby_refuses_ticks() {
    // The pgrx framework installs the library this cluster loads.
    let _g = setup_ticks(&[]);
    let cluster = Cluster::init("log_min_messages = debug1\nlog_min_error_statement = error");
    let mut c = cluster.client();
    c.batch_execute("CREATE EXTENSION damascus; CREATE ROLE plain LOGIN")
        .unwrap();

    let reloaded = "sk-reloaded-0123456789";
    c.batch_execute(&format!(
        "ALTER SYSTEM SET damascus.llm_api_key = '{reloaded}'"
    ))
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "the postmaster to log the changed key",
        Duration::from_secs(20),
        || {
            cluster
                .log()
                .contains(r#"parameter "damascus.llm_api_key" changed to "******** (sha256 "#)
                .then_some(())
        },
    );
    // A logged statement (log_statement = all) that names the key.
    let logged = "sk-logged-0123456789";
    c.batch_execute("SET log_statement = 'all'").unwrap();
    c.batch_execute(&format!(
        "ALTER SYSTEM SET damascus.llm_api_key = '{logged}'"
    ))
    .unwrap();
    c.batch_execute("RESET log_statement").unwrap();
    // A SET the server refuses (the key is set in the configuration only, and by superusers only), whose
    // statement is logged after the error.
    let refused = "sk-refused-0123456789";
    let mut plain = postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster.port)
        .user("plain")
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap();
    let err = plain
        .batch_execute(&format!("SET damascus.llm_api_key = '{refused}'"))
        .expect_err("the key cannot be set in a session");
    assert!(
        matches!(err.code().map(|s| s.code()), Some("42501" | "55P02")),
        "{err}"
    );
    assert!(!err.to_string().contains(refused), "{err}");
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        cluster
            .log()
            .lines()
            .any(|l| l.contains("ERROR:") && l.contains("llm_api_key"))
            .then_some(())
    });
    let log = cluster.log();
    for secret in [reloaded, logged, refused] {
        assert!(
            !log.contains(secret),
            "the key {secret} is in the server log:\n{log}"
        );
    }
    assert!(
        log.contains("the rest is hidden by damascus"),
        "the logged ALTER SYSTEM is cut after the setting's name:\n{log}"
    );
    assert!(
        log.lines().count() > 20,
        "debug1 logged more than the redacted lines:\n{log}"
    );

    // One LOG line per cycle (damascus.log_cycles, on by default): ticket, phase, verdict and milliseconds.
    let llm = FakeLlm::start(Behavior::Good).expect("fakellm starts");
    c.batch_execute(&format!(
        "ALTER SYSTEM SET damascus.llm_url = '{}'",
        llm.url()
    ))
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for("the new llm_url", Duration::from_secs(10), || {
        let url: String = cluster
            .client()
            .query_one("SELECT current_setting('damascus.llm_url')", &[])
            .unwrap()
            .get(0);
        (url == llm.url()).then_some(())
    });
    let logged_id: i64 = c
        .query_one("SELECT damascus_submit('Logged', 'body')", &[])
        .unwrap()
        .get(0);
    let verdict: String = c
        .query_one("SELECT verdict FROM damascus_tick()", &[])
        .unwrap()
        .get(0);
    assert_eq!(verdict, "spec_ok");
    let line = format!("damascus: ticket {logged_id} refine_spec spec_ok -> specified in ");
    wait_for("the cycle's log line", Duration::from_secs(10), || {
        cluster.log().contains(&line).then_some(())
    });
    c.batch_execute("ALTER SYSTEM SET damascus.log_cycles = off")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for("log_cycles off", Duration::from_secs(10), || {
        let on: String = cluster
            .client()
            .query_one("SELECT current_setting('damascus.log_cycles')", &[])
            .unwrap()
            .get(0);
        (on == "off").then_some(())
    });
    let quiet_id: i64 = c
        .query_one("SELECT damascus_submit('Quiet', 'body')", &[])
        .unwrap()
        .get(0);
    c.query_one("SELECT verdict FROM damascus_tick()", &[])
        .unwrap();
    // The tick has returned, so its worker has logged whatever it was going to.
    assert!(
        !cluster
            .log()
            .contains(&format!("damascus: ticket {quiet_id} refine_spec")),
        "no cycle line with damascus.log_cycles = off"
    );
    // The same cluster as a hot standby: standby.signal and no primary to follow, so it stays in recovery.
    cluster.stop();
    run({
        let mut t = as_postgres(Path::new("/usr/bin/touch"));
        t.arg(cluster.data().join("standby.signal"));
        t
    });
    cluster.start();
    let mut s = cluster.client();
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    let started = Instant::now();
    let err = s
        .query("SELECT * FROM damascus_tick()", &[])
        .expect_err("a standby runs no cycle");
    assert_eq!(err.code().map(|s| s.code()), Some("25006"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after {:?}",
        started.elapsed()
    );
    let hint = err
        .as_db_error()
        .and_then(|d| d.hint())
        .unwrap_or_default()
        .to_string();
    assert!(hint.contains("primary"), "{hint}");
}
