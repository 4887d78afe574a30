//! SQL functions written in Rust (the rest of the API is SQL in `sql/api.sql`).

pub mod claim;
pub mod credentials;
pub mod leads;
pub mod mappings;
pub mod process;
pub mod queue;
pub mod webhooks;
