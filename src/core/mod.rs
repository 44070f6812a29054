//! The plain-Rust heart of damascus: everything that can be decided without a database lives here and never imports pgrx.

pub mod backoff;
pub mod lease;
pub mod phase;
pub mod spec;
pub mod ticket;
pub mod wire;
