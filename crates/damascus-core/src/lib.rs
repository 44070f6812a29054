//! damascus-core: everything damascus decides without a database (phases, judging, wire formats, backoff, leases) and its HTTP client; never depends on pgrx.

pub mod backoff;
pub mod lease;
pub mod llm;
pub mod phase;
pub mod spec;
pub mod template;
pub mod ticket;
pub mod validate;
pub mod wire;
