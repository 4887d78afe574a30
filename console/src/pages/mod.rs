//! One module per page. Every query runs as the signed-in role.
pub mod calls;
pub mod campaigns;
pub mod health;
pub mod queue;
pub mod telecallers;
