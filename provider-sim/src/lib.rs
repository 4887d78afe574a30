//! provider-sim: a loopback HTTP simulator of the voice-AI call providers pg_dialer talks to
//! (Ultravox, Twilio, a generic "VoiceAPI"), with latency, error, rate-limit, hang and
//! dropped-connection faults, deterministic per-number rules, a request log and a control API.
//!
//! ```no_run
//! use provider_sim::{Rule, SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default(), 0).unwrap();
//! sim.set_rules(vec![Rule::new("+15550000001").status(429).retry_after_secs(2).times(1)]);
//! println!("{}", sim.base_url());
//! ```

mod client;
mod common;
mod config;
mod control;
mod generic;
mod log;
mod server;
mod state;
mod twilio;
mod ultravox;

pub use client::{SimClient, SimClientError};
pub use config::{parse_duration_range, Provider, Rule, SimConfig};
pub use log::RequestRecord;
pub use server::Simulator;
pub use state::{max_concurrent_calls, SimCall, SimStats};
