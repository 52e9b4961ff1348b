//! A small async QMP client, hand-written on `serde_json` and tokio.
//!
//! **Why not the `qapi` / `qapi-qmp` crates** (evaluated at 0.15.0, the newest release):
//! - *Schema lag.* `qapi-qmp` generates its types at build time from a vendored QEMU schema
//!   that stops at QEMU 9.1; we target QEMU 10. Its enums are closed, so a status or capability
//!   value added after 9.1 (QEMU 10 has several in migration) makes a whole reply fail to decode.
//!   We decode the dozen replies we use ourselves and keep unknown enum values as `Other(..)`.
//! - *Hostile input.* Its tokio codec (`JsonLinesCodec`) buffers until a newline with no bound,
//!   so a peer that never sends one grows our memory without limit. Ours caps a line at
//!   [`MAX_LINE_BYTES`] and resynchronises at the next newline.
//! - *Weight.* The build script generates code for the whole QMP schema (hundreds of types)
//!   and pulls `futures`, `tokio-util`, `bytes`, `memchr`; on the 2-core machines this project
//!   builds on, that is a large cost for about fifteen commands.
//! - *Shape.* We need per-command deadlines, id matching that survives a timeout, a bounded
//!   event buffer and the peer's pid (`SO_PEERCRED`); wrapping the crate's stream would
//!   re-implement most of that anyway.
//!
//! The protocol part is small: a greeting line, `qmp_capabilities`, then one JSON object per
//! line in each direction, replies carrying the command's `id`, events interleaved anywhere.

mod client;
mod error;
mod wire;

/// A fake QMP server for tests, here and in the daemon's (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use client::{MAX_BUFFERED_EVENTS, QmpClient, QmpOptions, peer_pid};
pub use error::QmpError;
pub use wire::{
    EventTimestamp, Line, LineReader, MAX_LINE_BYTES, Malformed, Message, QemuVersion, QmpEvent,
    QmpGreeting, encode_command, parse_message,
};

#[cfg(test)]
mod tests;
