//! aerostat-core: the pure heart of aerostat.
//!
//! **Owns** the units ([`Bytes`], [`Millis`]), the control-loop contract
//! ([`Observation`] in, [`Decision`] out), the policies (`static`, `mom`, `proxmox`,
//! `aerostat`) and the [`Controller`] that guards what they propose.
//!
//! **Does not** do I/O, read clocks, spawn threads or draw random numbers: every input
//! arrives in an [`Observation`], so a decision can be replayed bit for bit and the
//! same controller runs in the simulator and against real QEMU.
//!
//! **Key design decision:** policies *propose*, guards *decide*. Safety (floors,
//! configured maximum, bounded steps, the host reserve) lives in one place,
//! [`controller`], so no policy can break it, and every change carries a [`Rule`]
//! and a sentence a person can read.

pub mod controller;
pub mod decision;
pub mod ksm;
pub mod linux;
pub mod observation;
mod per_vm;
pub mod planner;
pub mod policy;
pub mod resize;
pub mod swapping;
pub mod units;

pub use controller::{Controller, GuardConfig};
pub use decision::{Action, ActionKind, Alert, Decision, Rule};
pub use observation::{
    Blocks, Coldness, GuestStats, HostSample, Observation, PRIORITY_RANGE, VmClass, VmSample,
    priority_problem,
};
pub use policy::{Policy, PolicyKind, PolicySettings, Proposal, Reason, WorkingSet};
pub use units::{Bytes, Millis, UnitError};
