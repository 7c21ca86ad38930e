//! Everything Slack: the Web API, rendering, the consolidator, and the
//! handlers for commands, interactions and events (over HTTP or Socket Mode).

pub mod api;
pub mod consolidator;
pub mod handlers;
pub mod intake;
pub mod mrkdwn;
pub mod render;
pub mod socket_mode;
pub mod verify;
