//! The platform interface: everything `tally-client` (and the agent built on it) needs from the
//! operating system, in one place, with one implementation per platform.
//!
//! Only Linux is implemented ([`linux`]). On any other target this crate does not compile: the
//! `compile_error!` below names what a port must provide, rather than a stub that would make a
//! client with an empty hardware fingerprint (every machine the same, R12 meaningless) or no
//! agent. docs/ARCHITECTURE.md ("Platforms") says the same for people.
//!
//! What a platform provides (Linux in brackets):
//! - [`hardware_components`]: the hardware fingerprint's components (R12) as `(name, value)`
//!   pairs named `disk`, `board`, `nic`, `cpu`, `memory` (sysfs and procfs); a component the
//!   machine does not have is left out, never invented.
//! - [`machine_name`]: the name reported to hosts (R27) (`/proc/sys/kernel/hostname`).
//! - The agent transport (R13): [`AgentStream`] and [`AgentListener`], a local stream socket that
//!   any local user can connect to ([`bind_agent`]), whose server learns the connecting user's
//!   id from the kernel ([`peer_uid`]), never from the peer's word (a Unix socket with
//!   `SO_PEERCRED`; a Windows port would use a named pipe and the client's token SID, macOS a
//!   Unix socket and `getpeereid`).
//!
//! Outside this module the crate also assumes POSIX file modes (`fsmode`, X4) and advisory
//! file locks on the state file (`state`); a Windows port must give those an equivalent too
//! (ACLs, `LockFileEx`).

#[cfg(target_os = "linux")]
pub mod linux;

#[cfg(target_os = "linux")]
pub use linux::{
    AgentListener, AgentStream, agent_answers, bind_agent, connect_agent, hardware_components,
    machine_name, peer_uid,
};

#[cfg(not(target_os = "linux"))]
compile_error!(
    "tally-client supports Linux only. A port must implement the platform interface of \
     crates/tally-client/src/platform/mod.rs (hardware_components, machine_name, AgentStream, \
     AgentListener, bind_agent, connect_agent, agent_answers, peer_uid) plus file modes and \
     state-file locking; see docs/ARCHITECTURE.md, \"Platforms\"."
);
