//! Every damascus setting: its name, context, bounds and default, and a snapshot read on the main thread.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Database the static workers connect to. Postmaster context: workers connect once at start.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// How many static workers to start; 0 means manual ticks only.
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// Milliseconds an idle worker sleeps on its latch before looking for work again.
pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Minutes after which a claim counts as abandoned and the ticket is claimable again.
pub static STALE_CLAIM_MINUTES: GucSetting<i32> = GucSetting::<i32>::new(30);

/// Base URL of the LLM endpoint; the Anthropic Messages path is appended.
pub static LLM_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"https://api.anthropic.com"));

/// Model name sent with each request.
pub static LLM_MODEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"claude-sonnet-4-5"));

/// API key sent as `x-api-key`; superuser-only and hidden, because it is a secret.
pub static LLM_API_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Seconds one LLM call may take, connect to last byte.
pub static LLM_TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(300);

/// Output token cap for refine_spec. The floor of 3000 exists because a 1500 cap cut specs short.
pub static REFINE_SPEC_MAX_TOKENS: GucSetting<i32> =
    GucSetting::<i32>::new(crate::core::phase::REFINE_SPEC_DEFAULT_MAX_TOKENS as i32);

/// Registers the settings; called from `_PG_init` in every process that loads the library.
pub fn init() {
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
        c"damascus.stale_claim_minutes",
        c"Minutes after which a ticket's claim is considered abandoned.",
        c"A claimed ticket is not claimable again until its claim is older than this window.",
        &STALE_CLAIM_MINUTES,
        1,
        10_080,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_string_guc(
        c"damascus.llm_url",
        c"Base URL of the LLM API (Anthropic Messages wire format).",
        c"Requests go to <llm_url>/v1/messages.",
        &LLM_URL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"damascus.llm_model",
        c"Model name sent to the LLM API.",
        c"",
        &LLM_MODEL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"damascus.llm_api_key",
        c"API key for the LLM API; when unset, the server's ANTHROPIC_API_KEY environment variable is used.",
        c"",
        &LLM_API_KEY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_int_guc(
        c"damascus.llm_timeout",
        c"Longest time one LLM call may take.",
        c"",
        &LLM_TIMEOUT_S,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"damascus.refine_spec_max_tokens",
        c"max_tokens sent with refine_spec requests.",
        c"Never below 3000: a smaller cap truncates a six-section spec.",
        &REFINE_SPEC_MAX_TOKENS,
        crate::core::phase::REFINE_SPEC_MIN_MAX_TOKENS as i32,
        128_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"damascus".as_ptr()) };
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
    pub stale_claim_minutes: i32,
    pub llm: crate::core::wire::LlmConfig,
    pub refine_spec_max_tokens: u32,
}

/// Reads every runtime setting once; the API key falls back to the server's environment.
pub fn snapshot() -> Snapshot {
    let api_key = string(&LLM_API_KEY).or_else(|| {
        std::env::var("ANTHROPIC_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
    });
    Snapshot {
        naptime_ms: NAPTIME_MS.get().max(10) as u64,
        stale_claim_minutes: STALE_CLAIM_MINUTES.get(),
        llm: crate::core::wire::LlmConfig {
            base_url: string(&LLM_URL).unwrap_or_default(),
            model: string(&LLM_MODEL).unwrap_or_default(),
            api_key,
            timeout: std::time::Duration::from_secs(LLM_TIMEOUT_S.get().max(1) as u64),
        },
        refine_spec_max_tokens: REFINE_SPEC_MAX_TOKENS.get().max(0) as u32,
    }
}

/// Name of the database the static workers serve.
pub fn database() -> String {
    string(&DATABASE).unwrap_or_else(|| "postgres".to_string())
}

/// Number of static workers to register.
pub fn workers() -> i32 {
    WORKERS.get()
}
