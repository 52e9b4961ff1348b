//! Scenario files (TOML): parsing in two stages, raw then validated.
//!
//! Stage one is serde with `deny_unknown_fields` and units parsed while deserializing,
//! so a misspelt key or a bad unit is reported by the TOML parser with its line and
//! column. Stage two, [`RawScenario::validate`], checks what spans several keys
//! (working set above configured memory, reserve above host memory, ...) and names the
//! key path and the line of the `[[vm]]` table it concerns.

use std::path::{Path, PathBuf};

use crate::input::shorten_quoted;
use crate::input::table::{spanned_tables, table, table_opt, tables_opt};
use aerostat_core::linux::Watermarks;
use aerostat_core::{Bytes, Millis, VmClass};
use serde::{Deserialize, Deserializer};

mod locate;
mod validate;

use locate::{at_list_header, duplicate_key_at, key_path_at, line_of, names_for, table_header};
pub use validate::interval_problem;

/// A bad scenario file: which file, where, what.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {}", shorten_quoted(.message))]
    Parse { path: PathBuf, message: String },
    #[error("{path}:{line}: {}", shorten_quoted(&format!("`{key}`: {message}")))]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

fn human<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

pub(crate) fn human_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    human(d).map(Some)
}

/// `"500MiB/s"` → bytes per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate(pub Bytes);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let Some(bytes) = s.trim().strip_suffix("/s") else {
            return Err(format!("`{s}` is not a rate (write it like \"500MiB/s\")"));
        };
        bytes.parse().map(Rate).map_err(|e| e.to_string())
    }
}

/// A guest's `min_free`: Linux's usual value for its size, or a size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MinFree {
    Linux,
    Set(Bytes),
}

impl std::str::FromStr for MinFree {
    type Err = String;
    fn from_str(s: &str) -> Result<MinFree, String> {
        if s.trim() == "linux" {
            return Ok(MinFree::Linux);
        }
        s.parse().map(MinFree::Set).map_err(|e| {
            format!("{e} (write \"linux\" for a common Linux guest's, or a size like \"44MiB\")")
        })
    }
}

/// `"100MiB/h"` → bytes per hour, for leaks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerHour(pub Bytes);

impl std::str::FromStr for PerHour {
    type Err = String;
    fn from_str(s: &str) -> Result<PerHour, String> {
        let Some(bytes) = s.trim().strip_suffix("/h") else {
            return Err(format!(
                "`{s}` is not a rate per hour (write it like \"100MiB/h\")"
            ));
        };
        bytes.parse().map(PerHour).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    #[serde(deserialize_with = "table")]
    pub scenario: RawMeta,
    #[serde(deserialize_with = "table")]
    pub host: RawHost,
    #[serde(default, deserialize_with = "spanned_tables")]
    pub vm: Vec<toml::Spanned<RawVm>>,
    /// The host's live-migration escape (default: off).
    #[serde(default, deserialize_with = "table_opt")]
    pub migration: Option<RawMigration>,
    /// Count the TLB shootdowns the balloons cause (default: not counted).
    #[serde(default, deserialize_with = "table_opt")]
    pub tlb: Option<crate::tlb::RawTlb>,
}

/// `[migration]`: when the guests' floors no longer fit, move one away to a peer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMigration {
    /// Run the escape at all (default false).
    #[serde(default)]
    pub escape: bool,
    /// How long the pressure must last before a guest is moved (default 60 s).
    #[serde(default, deserialize_with = "human_opt")]
    pub grace: Option<Millis>,
    /// Link to the peers (default 1 GiB/s, about 10 GbE).
    #[serde(default, deserialize_with = "human_opt")]
    pub bandwidth: Option<Rate>,
    /// Longest acceptable pause (default 300 ms, QEMU's `downtime-limit`).
    #[serde(default, deserialize_with = "human_opt")]
    pub downtime: Option<Millis>,
    /// Budget for one migration (default 5 min); pre-copy still running then is cancelled.
    #[serde(default, deserialize_with = "human_opt")]
    pub max_time: Option<Millis>,
    /// The peers can take post-copy (default true).
    #[serde(default)]
    pub postcopy: Option<bool>,
    /// Host swap-in rate that counts as thrashing (default: watch the floors only).
    #[serde(default, deserialize_with = "human_opt")]
    pub thrash_limit: Option<Rate>,
    /// How many guests the host may send away in the run (default 1).
    #[serde(default)]
    pub peers: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeta {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(deserialize_with = "human")]
    pub duration: Millis,
    #[serde(default)]
    pub seed: u64,
    /// Simulation step (default 1 s).
    #[serde(default, deserialize_with = "human_opt")]
    pub tick: Option<Millis>,
    /// Policy interval (default: the policy's own).
    #[serde(default, deserialize_with = "human_opt")]
    pub interval: Option<Millis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    #[serde(deserialize_with = "human")]
    pub memory: Bytes,
    #[serde(deserialize_with = "human")]
    pub reserve: Bytes,
    #[serde(default, deserialize_with = "human_opt")]
    pub swap: Option<Bytes>,
    #[serde(default, deserialize_with = "human_opt")]
    pub swap_bandwidth: Option<Rate>,
    /// Memory the host's own processes use (default: half the reserve).
    #[serde(default, deserialize_with = "human_opt")]
    pub system: Option<Bytes>,
    /// QEMU's overhead per VM beyond guest memory (default 64 MiB).
    #[serde(default, deserialize_with = "human_opt")]
    pub vm_overhead: Option<Bytes>,
    /// Fraction of guest anonymous memory KSM merges away (default 0: KSM off).
    #[serde(default)]
    pub ksm: Option<f64>,
    /// Who runs KSM: "always" (default: `ksm` merged from the start) or "mom" (oVirt MoM's
    /// rule, as the daemon runs it: KSM merges toward `ksm` at the pace the rule sets).
    #[serde(default)]
    pub ksm_control: Option<KsmControl>,
    /// Guests report freed pages to the host (virtio-balloon free page reporting).
    #[serde(default)]
    pub free_page_reporting: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    pub name: String,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(deserialize_with = "human")]
    pub memory: Bytes,
    #[serde(default, deserialize_with = "human_opt")]
    pub min: Option<Bytes>,
    #[serde(default, deserialize_with = "human_opt")]
    pub swap: Option<Bytes>,
    #[serde(default, deserialize_with = "human_opt")]
    pub swap_bandwidth: Option<Rate>,
    #[serde(default)]
    pub priority: Option<f64>,
    #[serde(default)]
    pub shares: Option<u32>,
    #[serde(default)]
    pub class: Option<VmClass>,
    /// The operator's headroom for the `aerostat` policy (`VmSample::headroom`).
    #[serde(default, deserialize_with = "human_opt")]
    pub headroom: Option<Bytes>,
    /// When the VM starts (default: at once); replicas start `stagger` apart.
    #[serde(default, deserialize_with = "human_opt")]
    pub start: Option<Millis>,
    #[serde(default, deserialize_with = "human_opt")]
    pub stagger: Option<Millis>,
    #[serde(default)]
    pub balloon: Option<bool>,
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// The balloon driver reports that it gave back whatever it was asked and keeps the
    /// memory (a broken or hostile driver; docs/trust-model.md).
    #[serde(default)]
    pub balloon_lies: bool,
    /// What the guest reports: "full" (Linux ≥ 6.12), "classic" (older kernels), "none",
    /// "lying" (claims to be idle) or "greedy" (claims to be full and under pressure).
    #[serde(default)]
    pub stats: Option<StatsMode>,
    /// How often the guest's statistics are refreshed (QEMU's polling interval): between
    /// polls the policy reads the last poll's stats next to the live balloon `actual`, as
    /// on a real host. Default: every tick.
    #[serde(default, deserialize_with = "human_opt")]
    pub stats_interval: Option<Millis>,
    /// The guest swaps on a virtual disk of its own whose reads and writes the host sees
    /// (QEMU's `query-blockstats`; the daemon's `vm.NAME.swap_disk`): its swap-ins and
    /// swap-outs reach the policy as `VmSample::swap_disk_read` and `swap_disk_written`,
    /// fresh every tick whatever `stats_interval`.
    #[serde(default)]
    pub swap_disk: bool,
    /// Balloon inflation rate (default 1GiB/s, as measured on KVM).
    #[serde(default, deserialize_with = "human_opt")]
    pub balloon_rate: Option<Rate>,
    /// Guest memory the balloon can never take (kernel, page tables); default 96 MiB + 1.5 %.
    #[serde(default, deserialize_with = "human_opt")]
    pub kernel: Option<Bytes>,
    /// Pinned memory (huge pages, VFIO): not balloonable.
    #[serde(default, deserialize_with = "human_opt")]
    pub pinned: Option<Bytes>,
    /// Whether a live migration can move the VM (`VmSample::migratable`); `false` for a
    /// passthrough device QEMU will not migrate. Default `true`.
    #[serde(default)]
    pub migratable: Option<bool>,
    /// Whether the controller drives the VM. `false`: it runs on the host and holds memory,
    /// but no policy sees or resizes it (another tool holds its QMP socket; the daemon lists
    /// such a socket as not adopted). The policy is told what its QEMU holds, as the daemon
    /// tells it (`HostSample::unmanaged`). Default `true`.
    #[serde(default)]
    pub managed: Option<bool>,
    /// A guest kernel that keeps free memory as Linux does: `"linux"` (a common guest's
    /// `vm.min_free_kbytes`, [`Watermarks::typical`]) or that sysctl as a size. Left out,
    /// the guest keeps none: every free page is the balloon's at no cost.
    #[serde(default, deserialize_with = "human_opt")]
    pub min_free: Option<MinFree>,
    /// Memory above `boot` is a virtio-mem device (see [`VirtioMem`]).
    #[serde(default, deserialize_with = "table_opt")]
    pub virtio_mem: Option<RawVirtioMem>,
    #[serde(deserialize_with = "table")]
    pub workload: RawWorkload,
}

/// `virtio_mem = { boot = "2GiB", block = "2MiB" }` in a `[[vm]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtioMem {
    #[serde(deserialize_with = "human")]
    pub boot: Bytes,
    #[serde(default, deserialize_with = "human_opt")]
    pub block: Option<Bytes>,
}

/// A guest whose memory above `boot` is a virtio-mem device of `memory − boot`: a target is
/// carried out in whole blocks (rounded up, `aerostat_core::resize::split`; a balloon beside
/// blocks above 16 MiB takes the rounding back, `resize::balloon_trims`), as the daemon
/// does, and a guest without a balloon (`balloon = false`) cannot go below `boot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMem {
    pub boot: Bytes,
    pub block: Bytes,
}

impl VirtioMem {
    /// The memory the guest ends up with for `target`, with or without a balloon below boot
    /// memory.
    pub fn carried_out(&self, target: Bytes, memory: Bytes, balloon: bool) -> Bytes {
        let device = aerostat_core::resize::Pluggable {
            max: memory - self.boot,
            block: self.block,
        };
        let target = if balloon {
            target
        } else {
            target.max(self.boot)
        };
        let trim = self.blocks(balloon).balloon_trims;
        aerostat_core::resize::split(target, self.boot, &[device], trim).total()
    }

    /// The device as a controller sees it.
    pub fn blocks(&self, balloon: bool) -> aerostat_core::observation::Blocks {
        aerostat_core::observation::Blocks {
            boot: self.boot,
            step: self.block,
            balloon_trims: aerostat_core::resize::balloon_trims(balloon, self.block, self.boot),
        }
    }
}

/// What a simulated guest reports through its balloon's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsMode {
    /// All stats including reclaim scans (Linux ≥ 6.12).
    #[default]
    Full,
    /// Classic stats only (free, available, caches, swap, faults).
    Classic,
    /// No stats at all (no polling, or a guest without the driver's stats queue).
    None,
    /// Reports that it is idle and has everything free, whatever it does.
    Lying,
    /// Reports that it uses everything it has and is under pressure (no free memory, no
    /// cache, 16 MiB/s of swap-ins, 4,096 major faults a second), whatever it does: a guest
    /// after memory it does not need.
    Greedy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    Steady,
    Diurnal,
    Burst,
    Ramp,
    Leak,
    Idle,
    Boot,
    Phases,
    Trace,
}

impl WorkloadKind {
    /// The name as written in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Steady => "steady",
            WorkloadKind::Diurnal => "diurnal",
            WorkloadKind::Burst => "burst",
            WorkloadKind::Ramp => "ramp",
            WorkloadKind::Leak => "leak",
            WorkloadKind::Idle => "idle",
            WorkloadKind::Boot => "boot",
            WorkloadKind::Phases => "phases",
            WorkloadKind::Trace => "trace",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    pub kind: WorkloadKind,
    #[serde(default, deserialize_with = "human_opt")]
    pub working_set: Option<Bytes>,
    #[serde(default, deserialize_with = "human_opt")]
    pub peak: Option<Bytes>,
    #[serde(default, deserialize_with = "human_opt")]
    pub period: Option<Millis>,
    #[serde(default, deserialize_with = "human_opt")]
    pub page_cache: Option<Bytes>,
    /// Fraction of the page cache that is re-read (part of the working set); default 0.3.
    #[serde(default)]
    pub cache_hot: Option<f64>,
    /// Anonymous memory allocated and then never touched again.
    #[serde(default, deserialize_with = "human_opt")]
    pub cold: Option<Bytes>,
    /// Burst: when it starts (default: a third into the run).
    #[serde(default, deserialize_with = "human_opt")]
    pub at: Option<Millis>,
    /// Burst: how long the rise takes (default 60 s).
    #[serde(default, deserialize_with = "human_opt")]
    pub rise: Option<Millis>,
    /// Burst: how long the peak holds (default 1 h). Boot: how long boot lasts (default 2 min).
    #[serde(default, deserialize_with = "human_opt")]
    pub hold: Option<Millis>,
    /// Leak: growth of cold anonymous memory.
    #[serde(default, deserialize_with = "human_opt")]
    pub rate: Option<PerHour>,
    /// Relative noise on the working set (default 0.02).
    #[serde(default)]
    pub noise: Option<f64>,
    /// Diurnal: phase shift.
    #[serde(default, deserialize_with = "human_opt")]
    pub phase: Option<Millis>,
    /// Phases: `[{ at = "1h", working_set = "2GiB", page_cache = "1GiB" }, ...]`.
    /// `None` where the file has no `phases` (`phases = []` is set, and an error on any
    /// other kind than `phases`).
    #[serde(default, deserialize_with = "tables_opt")]
    pub phases: Option<Vec<RawPhase>>,
    /// Trace: CSV with `time_s,working_set_mib,page_cache_mib` rows (relative to the scenario file).
    #[serde(default)]
    pub trace: Option<PathBuf>,
    /// Distinct memory the guest dirties per second while it runs (what QEMU's
    /// `calc-dirty-rate` measures); default: [`DEFAULT_DIRTY_FRACTION_PER_S`] of its
    /// resident hot anonymous memory per second.
    #[serde(default, deserialize_with = "human_opt")]
    pub dirty_rate: Option<Rate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPhase {
    #[serde(deserialize_with = "human")]
    pub at: Millis,
    #[serde(deserialize_with = "human")]
    pub working_set: Bytes,
    #[serde(default, deserialize_with = "human_opt")]
    pub page_cache: Option<Bytes>,
}

/// A validated scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub duration: Millis,
    pub seed: u64,
    pub tick: Millis,
    pub interval: Option<Millis>,
    pub host: HostSpec,
    /// One entry per VM (replicas expanded, named `name-0`, `name-1`, ...; sorted by name).
    pub vms: Vec<VmSpec>,
    /// The live-migration escape; `None` when the scenario has no `[migration]` table.
    pub migration: Option<MigrationSpec>,
    /// The TLB shootdown estimate; `None` when the scenario has no `[tlb]` table.
    pub tlb: Option<crate::tlb::TlbSpec>,
}

/// The host's live-migration escape, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationSpec {
    pub escape: bool,
    pub grace: Millis,
    /// Bytes per second, for both pre-copy and post-copy.
    pub bandwidth: Bytes,
    pub downtime: Millis,
    pub max_time: Millis,
    pub postcopy: bool,
    /// Bytes per second of host swap-in.
    pub thrash_limit: Option<Bytes>,
    pub peers: u32,
}

impl Default for MigrationSpec {
    fn default() -> MigrationSpec {
        MigrationSpec {
            escape: false,
            grace: Millis::secs(60),
            bandwidth: Bytes::gib(1),
            downtime: Millis(300),
            max_time: Millis::secs(300),
            postcopy: true,
            thrash_limit: None,
            peers: 1,
        }
    }
}

/// The default dirty rate: this fraction of the guest's resident hot anonymous memory is
/// rewritten per second (a 2 GiB working set dirties ~100 MiB/s).
pub const DEFAULT_DIRTY_FRACTION_PER_S: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct HostSpec {
    pub memory: Bytes,
    pub reserve: Bytes,
    pub swap: Bytes,
    pub swap_bandwidth: Bytes,
    pub system: Bytes,
    pub vm_overhead: Bytes,
    pub ksm: f64,
    pub ksm_control: KsmControl,
    pub free_page_reporting: bool,
}

/// Who runs the host's KSM in a scenario (`host.ksm_control`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KsmControl {
    /// `host.ksm` of guest memory is merged from the start, whatever the host's state.
    #[default]
    Always,
    /// oVirt MoM's KSM rule (`aerostat_core::ksm::KsmPolicy`), every 10 s, as the daemon's
    /// `[ksm] control` runs it: merging starts and stops with the rule and moves toward
    /// `host.ksm` at the pace it sets (`pages_to_scan` every `sleep_ms`).
    Mom,
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub memory: Bytes,
    pub min: Option<Bytes>,
    pub swap: Bytes,
    pub swap_bandwidth: Bytes,
    pub priority: f64,
    pub shares: u32,
    pub class: VmClass,
    pub headroom: Option<Bytes>,
    pub start: Millis,
    pub balloon: bool,
    pub deflate_on_oom: bool,
    pub balloon_lies: bool,
    pub stats: StatsMode,
    pub stats_interval: Option<Millis>,
    /// Its swap disk's reads are seen by the host (`swap_disk`).
    pub swap_disk: bool,
    pub balloon_rate: Bytes,
    pub kernel: Bytes,
    pub pinned: Bytes,
    /// A live migration can move it (`VmSample::migratable`).
    pub migratable: bool,
    /// A controller drives it (`managed`); else only its QEMU's memory reaches the policy.
    pub managed: bool,
    /// The guest kernel's watermarks (from `min_free` and the guest's size), when it
    /// keeps them.
    pub watermarks: Option<Watermarks>,
    /// Memory above boot memory is a virtio-mem device.
    pub virtio_mem: Option<VirtioMem>,
    pub workload: WorkloadSpec,
}

impl VmSpec {
    /// Whether a policy can change the guest's memory: a controller drives it, through a
    /// balloon or a virtio-mem device.
    pub fn resizable(&self) -> bool {
        self.managed && (self.balloon || self.virtio_mem.is_some())
    }

    /// The lowest memory the guest's devices can reach: boot memory for a virtio-mem guest
    /// without a balloon, else nothing.
    pub fn device_floor(&self) -> Bytes {
        match self.virtio_mem {
            Some(v) if !self.balloon => v.boot,
            _ => Bytes::ZERO,
        }
    }

    /// The floor a policy sees: the operator's `min`, raised to what the devices can reach.
    pub fn floor(&self) -> Option<Bytes> {
        match self.device_floor() {
            Bytes::ZERO => self.min,
            boot => Some(self.min.map_or(boot, |m| m.max(boot))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub kind: WorkloadKind,
    pub working_set: Bytes,
    pub peak: Bytes,
    pub period: Millis,
    pub page_cache: Bytes,
    pub cache_hot: f64,
    pub cold: Bytes,
    pub at: Millis,
    pub rise: Millis,
    pub hold: Millis,
    pub leak_per_hour: Bytes,
    pub noise: f64,
    pub phase: Millis,
    /// Phases, or trace points: (time, working set, page cache), sorted by time. Shared by
    /// the replicas of a `[[vm]]`: a million-row trace held once, not once per replica.
    pub points: std::sync::Arc<[(Millis, Bytes, Bytes)]>,
    /// Bytes per second; `None`: [`DEFAULT_DIRTY_FRACTION_PER_S`] of resident hot anon.
    pub dirty_rate: Option<Bytes>,
}

/// The default guest kernel footprint: 96 MiB plus 1.5 % (struct pages, slab, page tables).
pub fn default_kernel(memory: Bytes) -> Bytes {
    Bytes::mib(96) + Bytes::from_f64(memory.as_f64() * 0.015)
}

/// The most VMs one scenario may expand to: keeps a typo (`count = 100000`) from eating RAM.
pub const MAX_VMS: usize = 10_000;

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text =
            crate::input::read_bounded(path, crate::input::MAX_TOML_BYTES).map_err(|source| {
                ScenarioError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Scenario::parse(&text, path)
    }

    /// Parses scenario text; `path` names the file in errors and anchors trace files.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        // A byte-order mark (some Windows editors write one) is not TOML, and invisible.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw: RawScenario = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => {
                let offset = duplicate_key_at(text, span.start, e.message()).unwrap_or(span.start);
                let mut key = key_path_at(text, offset);
                let array_for_table = e
                    .message()
                    .starts_with("invalid type: sequence, expected a table");
                let message = match names_for(&key) {
                    // TOML's own words for a number or a date where a name belongs.
                    Some(names) if e.message().trim_end() == "wanted string or table" => {
                        format!("wanted {names}, in quotes")
                    }
                    // A list of tables where one table belongs (`[[vm.workload]]`): serde's
                    // words were "wanted exactly 1 element, more than 1 element", and are
                    // "invalid type: sequence" since a table is read from a table only
                    // (`input::table`).
                    _ if (e.message().starts_with("wanted exactly")
                        || (array_for_table && at_list_header(text, offset)))
                        && key.ends_with(']') =>
                    {
                        key.truncate(key.rfind('[').unwrap_or(key.len()));
                        let header = table_header(&key);
                        format!("one table, not a list: write `[{header}]`, not `[[{header}]]`")
                    }
                    _ if array_for_table => "wanted a table, not an array".to_string(),
                    _ => e.message().trim_end().to_string(),
                };
                ScenarioError::Invalid {
                    path: path.to_path_buf(),
                    line: line_of(text, offset),
                    key,
                    message,
                }
            }
            None => ScenarioError::Parse {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            },
        })?;
        raw.validate(text, path)
    }
}
