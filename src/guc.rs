//! Every damascus setting: its name, context, bounds and default, and a snapshot read on the main thread.

use std::ffi::{CStr, CString, c_char, c_int, c_void};

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

use damascus_core::lease;

use damascus_core::wire::Provider;

/// The wire formats `damascus.llm_provider` accepts; Postgres refuses any other value when it is set.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProviderSetting {
    #[name = c"anthropic"]
    Anthropic,
    #[name = c"openai"]
    Openai,
}

/// Database the static workers connect to. Postmaster context: workers connect once at start.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// How many static workers to start; 0 means manual ticks only.
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// Milliseconds an idle worker sleeps on its latch before looking for work again.
pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// How many cycles (LLM calls) one static worker keeps in flight at once.
pub static MAX_INFLIGHT: GucSetting<i32> = GucSetting::<i32>::new(16);

/// Minutes after which a claim counts as abandoned and the ticket is claimable again.
pub static STALE_CLAIM_MINUTES: GucSetting<i32> = GucSetting::<i32>::new(30);

/// Which wire format the LLM endpoint speaks.
pub static LLM_PROVIDER: GucSetting<ProviderSetting> =
    GucSetting::<ProviderSetting>::new(ProviderSetting::Anthropic);

/// Base URL of the LLM endpoint; the provider's path (/v1/messages or /v1/chat/completions) is appended.
pub static LLM_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"https://api.anthropic.com"));

/// Model name sent with each request whose phase names none.
pub static LLM_MODEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"claude-sonnet-4-5"));

/// API key (`x-api-key` for Anthropic, `Authorization: Bearer` for OpenAI); superuser-only and hidden, because it is a secret.
pub static LLM_API_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// A file the server reads the API key from (its first line); preferred over `LLM_API_KEY`.
pub static LLM_API_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Seconds between two renewals of a worker's live claims.
pub static HEARTBEAT_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(30);

/// Seconds one LLM call may take, connect to last byte, when its phase sets no timeout_s.
pub static LLM_TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(300);

/// How often a call whose failure says "later" is sent again within its cycle.
pub static LLM_MAX_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Largest LLM response body read, in bytes.
pub static LLM_MAX_RESPONSE_BYTES: GucSetting<i32> = GucSetting::<i32>::new(8 * 1024 * 1024);

/// Largest ticket body `damascus_submit` accepts, in bytes.
pub static MAX_BODY_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// How long a worker statement waits for a lock before it fails (ms).
pub static LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// How long one worker transaction (claim, phase, verdict, heartbeat) may run before it is cancelled (ms).
pub static STATEMENT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);

/// The provider's rate limits per minute (0: none): requests, input tokens, output tokens.
pub static LLM_RPM: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static LLM_INPUT_TPM: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static LLM_OUTPUT_TPM: GucSetting<i32> = GucSetting::<i32>::new(0);

/// One LOG line per cycle (ticket, phase, verdict, milliseconds).
pub static LOG_CYCLES: GucSetting<bool> = GucSetting::<bool>::new(true);

/// How long finished cycle rows are kept (minutes; 0 keeps them for ever).
pub static CYCLE_RETENTION_MIN: GucSetting<i32> = GucSetting::<i32>::new(30 * 24 * 60);

/// Registers the settings; called from `_PG_init` in every process that loads the library.
pub fn init() {
    install_log_redaction();
    GucRegistry::define_string_guc(
        c"damascus.database",
        c"Database the damascus background workers serve.",
        c"The static workers connect to this database at start; changing it needs a restart.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"damascus.workers",
        c"Number of damascus background workers; 0 runs no worker (manual ticks only).",
        c"Needs shared_preload_libraries = 'damascus' and a restart.",
        &WORKERS,
        0,
        64,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"damascus.naptime",
        c"How long an idle damascus worker sleeps before looking for work again.",
        c"",
        &NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"damascus.max_inflight",
        c"How many LLM calls one damascus worker keeps in flight at once.",
        c"Each is its own claim, phase and verdict; a reload applies to cycles started after it.",
        &MAX_INFLIGHT,
        1,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: the hooks are #[pg_guard] functions that only read their argument and these settings.
    unsafe {
        GucRegistry::define_int_guc_with_hooks(
            c"damascus.stale_claim_minutes",
            c"Minutes after which a ticket's claim is considered abandoned.",
            c"A claimed ticket is not claimable again until its claim is older than this window; it must be longer than damascus.heartbeat_seconds.",
            &STALE_CLAIM_MINUTES,
            1,
            10_080,
            GucContext::Sighup,
            GucFlags::UNIT_MIN,
            Some(check_stale_claim_minutes),
            None,
            None,
        );
        GucRegistry::define_int_guc_with_hooks(
            c"damascus.heartbeat_seconds",
            c"How often a worker renews the claims of its calls in flight.",
            c"Must be below the stale window (damascus.stale_claim_minutes), or live claims would go stale between heartbeats.",
            &HEARTBEAT_SECONDS,
            1,
            3600,
            GucContext::Sighup,
            GucFlags::UNIT_S,
            Some(check_heartbeat_seconds),
            None,
            None,
        );
    }
    GucRegistry::define_enum_guc(
        c"damascus.llm_provider",
        c"Wire format of the LLM API: anthropic (Messages) or openai (Chat Completions).",
        c"openai is what vLLM, llama.cpp's server, Ollama and most gateways speak.",
        &LLM_PROVIDER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: the hook is a #[pg_guard] function that only reads its argument.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"damascus.llm_url",
            c"Base URL of the LLM API (http or https).",
            c"Requests go to <llm_url>/v1/messages (anthropic) or <llm_url>/v1/chat/completions (openai).",
            &LLM_URL,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_llm_url),
            None,
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"damascus.llm_model",
        c"Model name sent to the LLM API when the phase's model column is NULL.",
        c"",
        &LLM_MODEL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: the hook is a #[pg_guard] function that returns a static string.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"damascus.llm_api_key",
            c"API key for the LLM API; prefer damascus.llm_api_key_file. When neither is set, the server's ANTHROPIC_API_KEY or OPENAI_API_KEY environment variable is used.",
            c"Never shown: SHOW and current_setting() give ******** and a fingerprint when it is set.",
            &LLM_API_KEY,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
            None,
            None,
            Some(show_secret),
        );
    }
    GucRegistry::define_string_guc(
        c"damascus.llm_api_key_file",
        c"File the server reads the LLM API key from (its first line); used instead of damascus.llm_api_key when set.",
        c"Read by the workers at start and after each reload; make it readable by the server's OS user only.",
        &LLM_API_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"damascus.llm_timeout",
        c"Longest time one LLM call may take when its phase's timeout_s is NULL.",
        c"",
        &LLM_TIMEOUT_S,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"damascus.llm_max_retries",
        c"How often an LLM call that failed with no answer, 408, 409, 425, 429 or 5xx is tried again within its cycle.",
        c"Waits grow from 250 ms with jitter and honour retry-after, all within the call's timeout; then the cycle is llm_error.",
        &LLM_MAX_RETRIES,
        0,
        10,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"damascus.llm_max_response_bytes",
        c"Largest LLM response body read; a larger one is llm_bad_response and the rest is not read.",
        c"",
        &LLM_MAX_RESPONSE_BYTES,
        1024,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"damascus.max_body_bytes",
        c"Largest ticket body damascus_submit accepts.",
        c"A longer body is refused with SQLSTATE 22023 and nothing is written.",
        &MAX_BODY_BYTES,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"damascus.lock_timeout",
        c"How long a damascus worker statement waits for a lock before it fails.",
        c"A worker never waits on a lock for longer (a ticket locked by someone else is skipped by the claim).",
        &LOCK_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"damascus.statement_timeout",
        c"How long one damascus worker transaction may run before it is cancelled.",
        c"Applies to each claim, phase, verdict and heartbeat transaction, never to the LLM call.",
        &STATEMENT_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    for (name, short, setting) in [
        (
            c"damascus.llm_rpm",
            c"Requests per minute the LLM provider allows, shared by every worker and tick; 0: no limit.",
            &LLM_RPM,
        ),
        (
            c"damascus.llm_input_tpm",
            c"Input tokens per minute the LLM provider allows (Anthropic cache reads do not count); 0: no limit.",
            &LLM_INPUT_TPM,
        ),
        (
            c"damascus.llm_output_tpm",
            c"Output tokens per minute the LLM provider allows (a call counts its max_tokens until it answers); 0: no limit.",
            &LLM_OUTPUT_TPM,
        ),
    ] {
        GucRegistry::define_int_guc(
            name,
            short,
            c"Enforced before each call with token buckets in shared memory: a call that would exceed it waits, its claim kept.",
            setting,
            0,
            i32::MAX,
            GucContext::Sighup,
            GucFlags::default(),
        );
    }
    GucRegistry::define_bool_guc(
        c"damascus.log_cycles",
        c"Logs one line per cycle at LOG level: ticket, phase, verdict and milliseconds.",
        c"",
        &LOG_CYCLES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"damascus.cycle_retention",
        c"How long finished rows of damascus.cycles are kept; 0 keeps them for ever.",
        c"Older rows are deleted by the first static worker (or a multi-cycle damascus_tick) in small batches.",
        &CYCLE_RETENTION_MIN,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    // SAFETY: called from _PG_init on the main thread, with a static NUL-terminated prefix.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"damascus".as_ptr()) };
}

/// Refuses a value with a detail the setter sees, as Postgres' GUC_check_errdetail does.
fn refuse(detail: &str) -> bool {
    if let Ok(detail) = CString::new(detail) {
        // SAFETY: inside a check hook on the main thread; pstrdup copies into the current memory context, and
        // Postgres reads the string right after the hook returns.
        unsafe { pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr()) };
    }
    false
}

#[pg_guard]
unsafe extern "C-unwind" fn check_llm_url(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the candidate value, which may itself be NULL (unset).
    let value = unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        CStr::from_ptr(*newval)
    };
    match damascus_core::wire::check_base_url(&value.to_string_lossy()) {
        Ok(()) => true,
        Err(e) => refuse(&e),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_heartbeat_seconds(
    newval: *mut c_int,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the candidate value.
    let heartbeat = unsafe { *newval };
    match lease::check_heartbeat(heartbeat, STALE_CLAIM_MINUTES.get()) {
        Ok(()) => true,
        Err(e) => refuse(&e),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_stale_claim_minutes(
    newval: *mut c_int,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the candidate value.
    let window = unsafe { *newval };
    match lease::check_heartbeat(HEARTBEAT_SECONDS.get(), window) {
        Ok(()) => true,
        Err(e) => refuse(&e),
    }
}

/// What SHOW and current_setting() give for the API key, to everyone (pg_read_all_settings members included).
#[pg_guard]
unsafe extern "C-unwind" fn show_secret() -> *const c_char {
    let shown = CString::new(damascus_core::wire::key_shown(
        string(&LLM_API_KEY).as_deref(),
    ))
    .unwrap_or_default();
    // SAFETY: Postgres copies the returned string right away; pstrdup puts it in the current memory context,
    // which outlives that copy.
    unsafe { pg_sys::pstrdup(shown.as_ptr()) }
}

/// The hook that ran before ours, called after we have redacted.
static mut PREVIOUS_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

/// Keeps the API key out of the server log and error messages. Postgres itself logs a changed setting with
/// its value when the configuration is reloaded (`parameter "damascus.llm_api_key" changed to "…"`), logs
/// statements that set it (`log_statement`, and `STATEMENT:` after an error), and a show hook cannot stop
/// either. Every field of a message that names the setting is cut after the name, a field holding the key
/// itself is replaced, and the statement behind a message that names it is not logged. Active in every
/// process that loads the library, the postmaster included when damascus is in shared_preload_libraries.
fn install_log_redaction() {
    // SAFETY: called once per process from _PG_init on the main thread, before any message can reach the
    // hook; the previous hook is kept and chained.
    unsafe {
        PREVIOUS_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(redact_api_key);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn redact_api_key(edata: *mut pg_sys::ErrorData) {
    // A key shorter than this could match ordinary text; such a key is no secret worth the noise.
    let key = LLM_API_KEY
        .get()
        .map(CString::into_bytes)
        .filter(|k| k.len() >= 8);
    // SAFETY: Postgres passes the report being emitted; its strings are NUL-terminated or NULL and live in
    // ErrorContext, the current memory context here, where the replacements are allocated too.
    unsafe {
        let e = &mut *edata;
        for field in [
            &mut e.message,
            &mut e.detail,
            &mut e.detail_log,
            &mut e.hint,
            &mut e.context,
            &mut e.internalquery,
        ] {
            if field.is_null() {
                continue;
            }
            let text = std::ffi::CStr::from_ptr(*field).to_bytes();
            if let Some(new) = damascus_core::wire::redact_key(text, key.as_deref())
                && let Ok(new) = CString::new(new)
            {
                *field = pg_sys::pstrdup(new.as_ptr());
            }
        }
        let stmt = pg_sys::debug_query_string;
        if !stmt.is_null() {
            let text = std::ffi::CStr::from_ptr(stmt).to_bytes();
            if damascus_core::wire::redact_key(text, key.as_deref()).is_some() {
                e.hide_stmt = true;
            }
        }
        if let Some(previous) = PREVIOUS_EMIT_LOG_HOOK {
            previous(edata);
        }
    }
}

fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

/// The settings one cycle needs, copied on the main thread so helper threads never read a GUC.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub naptime_ms: u64,
    pub max_inflight: usize,
    pub stale_claim_minutes: i32,
    pub provider: Provider,
    pub llm: damascus_core::wire::LlmConfig,
    pub llm_max_retries: u32,
    pub llm_max_response_bytes: u64,
    pub heartbeat_seconds: i32,
    pub log_cycles: bool,
    pub cycle_retention_minutes: i32,
    /// The provider's limits per minute: requests, input tokens, output tokens (0: none).
    pub rate_limits: [u64; 3],
}

/// The first line of `damascus.llm_api_key_file`, when it is set. A file that cannot be read is logged (its
/// path, never its content) and gives no key, so calls fail with the API's 401 rather than a crash.
fn key_from_file() -> Option<String> {
    let path = string(&LLM_API_KEY_FILE)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .next()
            .map(|l| l.trim().to_string())
            .filter(|k| !k.is_empty()),
        Err(e) => {
            warning!("damascus: cannot read damascus.llm_api_key_file {path:?}: {e}");
            None
        }
    }
}

/// Reads every runtime setting once; the API key falls back to the server's environment.
pub fn snapshot() -> Snapshot {
    let (provider, env_key) = match LLM_PROVIDER.get() {
        ProviderSetting::Anthropic => (Provider::Anthropic, "ANTHROPIC_API_KEY"),
        ProviderSetting::Openai => (Provider::OpenAi, "OPENAI_API_KEY"),
    };
    let api_key = key_from_file()
        .or_else(|| string(&LLM_API_KEY))
        .or_else(|| std::env::var(env_key).ok().filter(|k| !k.is_empty()));
    Snapshot {
        naptime_ms: NAPTIME_MS.get().max(10) as u64,
        max_inflight: usize::try_from(MAX_INFLIGHT.get()).unwrap_or(1).max(1),
        stale_claim_minutes: STALE_CLAIM_MINUTES.get(),
        provider,
        llm: damascus_core::wire::LlmConfig {
            base_url: string(&LLM_URL).unwrap_or_default(),
            model: string(&LLM_MODEL).unwrap_or_default(),
            api_key,
            timeout: std::time::Duration::from_secs(LLM_TIMEOUT_S.get().max(1) as u64),
        },
        llm_max_retries: u32::try_from(LLM_MAX_RETRIES.get()).unwrap_or(0),
        llm_max_response_bytes: u64::try_from(LLM_MAX_RESPONSE_BYTES.get()).unwrap_or(1024),
        heartbeat_seconds: HEARTBEAT_SECONDS.get(),
        log_cycles: LOG_CYCLES.get(),
        cycle_retention_minutes: CYCLE_RETENTION_MIN.get(),
        rate_limits: [LLM_RPM.get(), LLM_INPUT_TPM.get(), LLM_OUTPUT_TPM.get()]
            .map(|v| u64::try_from(v).unwrap_or(0)),
    }
}

/// Largest body `damascus_submit` accepts, in bytes.
pub fn max_body_bytes() -> usize {
    usize::try_from(MAX_BODY_BYTES.get()).unwrap_or(0)
}

/// `damascus.lock_timeout` in milliseconds.
pub fn lock_timeout_ms() -> i32 {
    LOCK_TIMEOUT_MS.get()
}

/// `damascus.statement_timeout` in milliseconds.
pub fn statement_timeout_ms() -> i32 {
    STATEMENT_TIMEOUT_MS.get()
}

/// Name of the database the static workers serve.
pub fn database() -> String {
    string(&DATABASE).unwrap_or_else(|| "postgres".to_string())
}

/// Number of static workers to register.
pub fn workers() -> i32 {
    WORKERS.get()
}

/// `damascus.stale_claim_minutes`.
pub fn stale_claim_minutes() -> i32 {
    STALE_CLAIM_MINUTES.get()
}
