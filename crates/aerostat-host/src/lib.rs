//! aerostat-host: the host's memory, as the host measures it.
//!
//! **Owns** the Linux probes that produce an [`aerostat_core::HostSample`]: `/proc/meminfo`,
//! `/proc/vmstat` (swap traffic) and `/proc/pressure/memory` (PSI) for a whole machine
//! ([`ProcHost`]), and memory cgroups, v1 and v2, standing in for a smaller host
//! ([`CgroupHost`]: limit as total, usage, reclaimable cache, OOM kills), with the few helpers
//! tests need to create a cgroup, limit it, move a process in and remove it.
//!
//! **Does not** decide anything, talk to QEMU, or act on the host beyond those cgroup helpers
//! and KSM's sysfs controls ([`KsmSysfs`]; NUMA page moves and the like come later, each in its
//! own module). It is synchronous:
//! every probe reads a few small kernel files, which never block for long.
//!
//! **Key design decision:** hand-written parsers over the `procfs` crate. `procfs` covers
//! meminfo, vmstat and PSI well, but not cgroup v1/v2 memory files, which we must parse
//! anyway; its errors do not name the file line that broke; and it would bring `rustix` and
//! friends for three `key value` formats. Ours are ~100 lines, take `&str` so tests feed them
//! real kernel text, only look at the keys they need (new kernel fields never break them), and
//! report `path:line: what` on bad input. A figure that cannot be read is an error or `None`,
//! never a silent zero.

mod cgroup;
mod error;
mod ksm;
mod parse;
mod proc;

pub use cgroup::{
    CgroupHost, CgroupSample, CgroupStat, CgroupVersion, V1_MEMORY_MOUNT, V2_MOUNT,
    own_memory_cgroup, parse_proc_cgroup, parse_v1_stat, parse_v2_stat, running_as_root,
};
pub use error::HostError;
pub use ksm::{KSM_DIR, KsmState, KsmSysfs};
pub use parse::{Pressure, parse_pressure};
pub use proc::{
    Meminfo, ProcHost, SWAP_PAGE_BYTES, SwapTraffic, host_sample, parse_meminfo, parse_vmstat,
};
