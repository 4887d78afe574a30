//! SQL functions written in Rust (the rest of the API is SQL in `sql/api.sql`).

pub mod credentials;
pub mod leads;
pub mod mappings;
pub mod pacing;
pub mod process;
pub mod queue;
pub mod webhooks;
