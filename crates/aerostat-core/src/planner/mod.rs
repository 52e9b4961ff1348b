//! Planners: pure predictions that tell an orchestrator what to do and why.
//!
//! Like the policies, a planner reads no clock and does no I/O: every number it uses is an
//! input, so a plan can be replayed and property-tested.

pub mod admission;
pub mod capacity;
pub mod escape;
pub mod migration;
