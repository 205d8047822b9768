//! One module per top-level subcommand.

pub mod agent;
pub mod authority;
pub mod authority_log;
pub mod authority_root;
pub mod bench;
pub mod catalog;
pub mod client;
pub mod demo;
pub mod generate;
pub mod host;
pub mod log;
pub mod remote;
pub mod slmgr;
