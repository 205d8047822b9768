//! `libtally`: Tally's client library for C, C++ and (through `bindings/python`) Python.
//!
//! A vendor's application opens a handle on its installation's state directory, installs the
//! edition's setup key (or a MAK), activates, and asks for the status. The C header is
//! `include/tally.h`, generated from [`capi`] by cbindgen and committed; docs/EMBEDDING.md tells
//! how to link and what to show users.
//!
//! # Layout
//! - [`embed`]: the safe, blocking Rust API ([`embed::Handle`]) that owns a Tokio runtime; the
//!   C ABI and the Python package both wrap it.
//! - [`capi`]: the `extern "C"` functions, result codes and plain structs of `tally.h`.
//! - [`logging`]: the per-handle logging hook.
//! - `panic`: every entry point catches panics; the per-thread last message.
//!
//! This is the only crate of the workspace that allows `unsafe`, for the C ABI alone; each
//! block carries a SAFETY note.
#![allow(unsafe_code)]

pub mod capi;
pub mod embed;
pub mod logging;

pub use embed::{ActivateOptions, Activation, ChangeKey, Error, Handle, Status};
pub use logging::{LogLevel, Logger};
