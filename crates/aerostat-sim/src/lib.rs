//! aerostat-sim: a deterministic simulator of KVM hosts and fleets.
//!
//! **Owns** the host model (RAM, reserve, QEMU overhead, KSM, swap with a bandwidth
//! limit, OOM killer), the guest model (balloon driver, LRU reclaim of cache and anon,
//! guest swap, OOM, stalls), workloads, scenario files, metrics and fleets, and the host's
//! live-migration escape in simulated time ([`migration`]).
//!
//! **Does not** decide anything: it drives `aerostat_core::Controller` exactly as the
//! daemon does, through [`aerostat_core::Observation`]s built only from what a real
//! host could measure. The true working set stays inside [`guest`] and reaches only
//! the metrics.
//!
//! **Key design decision:** virtual time and no random state — noise is a pure hash of
//! (seed, VM, time) — so a scenario and seed give byte-identical results on every
//! machine and thread count.

pub mod engine;
pub mod fleet;
pub mod guest;
pub mod host;
pub mod input;
pub mod metrics;
pub mod migration;
pub mod scenario;
pub mod tlb;
pub mod workload;

pub use engine::{RunOptions, RunResult, Simulation, run};
pub use metrics::{Summary, TimeSeries};
pub use scenario::{Scenario, ScenarioError};
