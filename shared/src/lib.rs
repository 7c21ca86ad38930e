//! Baton's shared vocabulary: the bot↔agent wire protocol, ids and limits.
//!
//! This crate is pure: serde types, parsing and constants, no I/O.
//!
//! # Layout
//!
//! - [`files`]: files attached in Slack: the limits check and safe names.
//! - [`ids`]: newtypes for task ids, agent and project names, session ids, personas.
//! - [`limits`]: every size limit and protocol interval, in one place.
//! - [`protocol`]: the typed messages of protocol version 1 and their codec.

pub mod files;
pub mod ids;
pub mod limits;
pub mod protocol;

pub use ids::{AgentName, NameError, Persona, ProjectName, SessionId, TaskId};
pub use protocol::{AgentMessage, BotMessage, ProtocolError};
