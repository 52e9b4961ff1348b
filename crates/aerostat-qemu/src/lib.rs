//! aerostat-qemu: talking to QEMU.
//!
//! **Owns** the QMP client ([`qmp::QmpClient`]: handshake, commands with ids and deadlines,
//! a bounded buffer of asynchronous events) and the QEMU backend ([`QemuVm`]): balloon target
//! and `actual`, virtio-balloon guest statistics mapped to [`aerostat_core::GuestStats`],
//! virtio-mem sizes, run state, the QEMU process's pid and RSS, and the migration primitives
//! (capabilities, parameters, start, progress, post-copy switch, cancel, dirty-rate probe).
//! Every operation returns a typed value or a [`QmpError`].
//!
//! **Does not** decide anything: no targets, no rates, no retries, no "when to migrate" —
//! that is policy, and it lives in `aerostat-core`. It does not start or supervise QEMU
//! processes, and it does not read host memory (that is `aerostat-host`).
//!
//! **Key design decision:** the QMP protocol is hand-written on `serde_json` rather than taken
//! from the `qapi` crates (schema stuck at QEMU 9.1, closed enums, an unbounded line reader;
//! see [`qmp`]). Every byte from the socket is treated as hostile: lines are capped at
//! [`qmp::MAX_LINE_BYTES`], malformed lines are counted and skipped, replies are matched by id
//! so a late answer is never taken for the wrong command, and guest-reported numbers that are
//! missing or implausible become `None`, never zero.

pub mod backend;
pub mod qmp;

pub use backend::{QemuVm, VmEvent};
pub use qmp::{QmpClient, QmpError, QmpEvent, QmpOptions};
