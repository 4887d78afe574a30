//! provider-sim: a loopback HTTP simulator of the voice-AI call providers pg_dialer talks to
//! (Ultravox, Twilio, Vapi, Retell, Bland, a generic "VoiceAPI"). It refuses requests the real
//! APIs refuse (checked with `provider-contract`, against the providers' OpenAPI files when a
//! spec directory is given), sends signed webhooks, and injects latency, error, rate-limit,
//! capacity, hang and dropped-connection faults, with deterministic per-number rules, a request
//! log and a control API.
//!
//! ```no_run
//! use provider_sim::{Rule, SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default(), 0).unwrap();
//! sim.set_rules(vec![Rule::new("+15550000001").status(429).retry_after_secs(2).times(1)]);
//! println!("{}", sim.base_url());
//! ```

mod bland;
mod client;
mod common;
mod config;
mod control;
mod end_webhooks;
mod exchange;
mod faults;
mod generic;
mod log;
mod mutex;
mod retell;
mod server;
mod state;
mod twilio;
mod ultravox;
mod vapi;
mod webhooks;

pub use client::{SimClient, SimClientError};
pub use config::{check_loopback_url, parse_duration_range, Provider, Rule, SimConfig};
pub use log::RequestRecord;
pub use provider_contract;
pub use server::Simulator;
pub use state::{max_concurrent_calls, SimCall, SimStats};
pub use webhooks::{bland_signature, retell_signature, twilio_signature, ultravox_signature, vapi_hmac_signature, WebhookRecord};
