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

fn human_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
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
    /// Balloon inflation rate (default 1GiB/s, as measured on KVM).
    #[serde(default, deserialize_with = "human_opt")]
    pub balloon_rate: Option<Rate>,
    /// Guest memory the balloon can never take (kernel, page tables); default 96 MiB + 1.5 %.
    #[serde(default, deserialize_with = "human_opt")]
    pub kernel: Option<Bytes>,
    /// Pinned memory (huge pages, VFIO): not balloonable.
    #[serde(default, deserialize_with = "human_opt")]
    pub pinned: Option<Bytes>,
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
    pub balloon_rate: Bytes,
    pub kernel: Bytes,
    pub pinned: Bytes,
    /// The guest kernel's watermarks (from `min_free` and the guest's size), when it
    /// keeps them.
    pub watermarks: Option<Watermarks>,
    /// Memory above boot memory is a virtio-mem device.
    pub virtio_mem: Option<VirtioMem>,
    pub workload: WorkloadSpec,
}

impl VmSpec {
    /// Whether a policy can change the guest's memory: a balloon, or a virtio-mem device.
    pub fn resizable(&self) -> bool {
        self.balloon || self.virtio_mem.is_some()
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
    /// Phases, or trace points: (time, working set, page cache), sorted by time.
    pub points: Vec<(Millis, Bytes, Bytes)>,
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

/// Whether the line of `offset` is a list-of-tables header (`[[vm.workload]]`).
fn at_list_header(text: &str, offset: usize) -> bool {
    text[line_start(text, offset)..]
        .trim_start()
        .starts_with("[[")
}

/// Where the line of byte `offset` (at most the end of `text`) begins.
fn line_start(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text[..offset].rfind('\n').map_or(0, |i| i + 1)
}

/// A key path as a TOML table header: `vm[0] (a).workload` → `vm.workload`.
fn table_header(key: &str) -> String {
    key.split('.')
        .map(|part| part.split(['[', ' ']).next().unwrap_or(part))
        .collect::<Vec<_>>()
        .join(".")
}

/// The names a key of a named kind takes (`kind`, `class`, `stats`, `ksm_control`), as the
/// parser lists them for a name it does not know: `\`steady\`, \`diurnal\`, …`.
fn names_for(key: &str) -> Option<String> {
    fn names<T: serde::de::DeserializeOwned>() -> Option<String> {
        let nothing = serde::de::value::StrDeserializer::<serde::de::value::Error>::new("");
        let e = T::deserialize(nothing).err()?.to_string();
        Some(e.split_once("expected ")?.1.to_string())
    }
    match key.rsplit('.').next()? {
        "kind" => names::<WorkloadKind>(),
        "class" => names::<VmClass>(),
        "stats" => names::<StatsMode>(),
        "ksm_control" => names::<KsmControl>(),
        _ => None,
    }
}

/// Where a key given twice is given the second time. The TOML stage reports a duplicate
/// key (`duplicate key `K``) at the start of the table that holds it — inside an inline
/// table, its first blank — where the key path named the table twice and not the key
/// (`vm[0] (a).workload.workload`). The second `K =` from there, before the next table
/// header (or the first, when the report points at the duplicate itself).
fn duplicate_key_at(text: &str, from: usize, message: &str) -> Option<usize> {
    let key = message
        .strip_prefix("duplicate key `")?
        .split('`')
        .next()
        .filter(|k| !k.is_empty())?;
    let from = from.min(text.len());
    let rest = &text[from..];
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| rest[i..].trim_start().starts_with('['))
        .unwrap_or(rest.len());
    let scope = &rest[..end];
    let mut found = scope.match_indices(key).filter(|&(i, _)| {
        let before = scope[..i].chars().next_back();
        let after = scope[i + key.len()..].trim_start();
        before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',') && after.starts_with('=')
    });
    let first = found.next()?.0;
    Some(from + found.next().map_or(first, |(i, _)| i))
}

/// `line` without a trailing `# comment` (a `#` inside a quoted string is kept).
fn without_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return &line[..i],
            None => {}
        }
    }
    line
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key path at byte `offset` (`vm[0] (web).workload.peak`, `host.memory`,
/// `vm[1] (runner).workload.phases[2].at`), from the table headers above it, the VM's name,
/// the array of inline tables it is in and the key before it on its line; for errors of the
/// TOML stage.
fn key_path_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = line_start(text, offset);
    let line_no = line_of(text, offset);
    let mut table = String::new();
    let mut vms = 0usize;
    let mut vm_name: Option<String> = None;
    // An array opened on an earlier line and not closed yet: its key, its elements so far
    // and how deep its brackets are open.
    let mut array: Option<(String, usize, usize)> = None;
    // Elements seen so far of each array of tables (`[[vm.workload.phases]]`) in this VM.
    let mut tables_in_arrays: std::collections::BTreeMap<String, usize> = Default::default();
    // The offending line itself is a table header when a field of that table is missing:
    // then the table is the answer. (A line that opens with `[` inside an open array is an
    // element: `  ["1h", "2GiB"],`.)
    let opens_with_bracket = text[line_start..].trim_start().starts_with('[');
    let mut at_header = false;
    // Inside a multi-line string (`description = """…"""`) nothing is a header or a key.
    let mut in_multiline: Option<&str> = None;
    for (n, line) in text.lines().enumerate() {
        if n + 1 == line_no {
            at_header = opens_with_bracket && array.is_none() && in_multiline.is_none();
            if !at_header {
                break;
            }
        }
        if n + 1 > line_no {
            break;
        }
        if let Some(delim) = in_multiline {
            if line.matches(delim).count() % 2 == 1 {
                in_multiline = None;
            }
            continue;
        }
        if let Some(delim) = ["\"\"\"", "'''"]
            .into_iter()
            .find(|d| line.matches(d).count() % 2 == 1)
        {
            in_multiline = Some(delim);
        }
        let t = without_comment(line).trim();
        if t.is_empty() {
            continue;
        }
        if let Some((_, elements, depth)) = &mut array {
            if *depth == 1 && t.starts_with(['{', '[']) {
                *elements += 1;
            }
            *depth = (*depth + t.matches('[').count()).saturating_sub(t.matches(']').count());
            if *depth == 0 {
                array = None;
            }
            continue;
        }
        if t == "[[vm]]" {
            table = format!("vm[{vms}]");
            vms += 1;
            vm_name = None;
            tables_in_arrays.clear();
        } else if let Some(h) = t.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            // An array of tables inside the VM (`[[vm.workload.phases]]`): its element.
            let h = h.trim();
            let index = tables_in_arrays.entry(h.to_string()).or_insert(0);
            let path = match h.strip_prefix("vm.") {
                Some(rest) if vms > 0 => format!("vm[{}].{rest}", vms - 1),
                _ => h.to_string(),
            };
            table = format!("{path}[{index}]");
            *index += 1;
        } else if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let h = h.trim();
            table = match h.strip_prefix("vm.") {
                Some(rest) if vms > 0 => format!("vm[{}].{rest}", vms - 1),
                _ => h.to_string(),
            };
        } else if let Some((k, v)) = t.split_once('=') {
            let (k, v) = (k.trim(), v.trim());
            if k == "name" && table.starts_with("vm[") && !table.contains('.') {
                vm_name = Some(v.trim_matches('"').to_string());
            }
            let depth = v
                .matches('[')
                .count()
                .saturating_sub(v.matches(']').count());
            if v.starts_with('[') && depth > 0 {
                array = Some((k.to_string(), 0, depth));
            }
        }
    }
    if at_header {
        return vm_path(table, vm_name.as_deref());
    }
    // The key: the key the offset points at (an unknown field: `bogus = 1`), or the last
    // `key =` before the offending value on its line.
    let before = &text[line_start..offset];
    // The offset at an inline table itself (a field missing from `{ at = "2m" }`), or at an
    // array that is an element where a table belongs (`phases = [["2m"]]`, not `at = ["2m"]`):
    // the element is the answer, no key inside it.
    let at_inline_table = text[offset..].starts_with('{')
        || (text[offset..].starts_with('[')
            && matches!(
                before.trim_end().chars().next_back(),
                Some('[' | ',') | None
            ));
    let ident: &str = {
        let rest = &text[offset..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        let (ident, after) = rest.split_at(end);
        if after.trim_start().starts_with('=') {
            ident
        } else {
            ""
        }
    };
    let key = match before.rsplit_once('=') {
        _ if at_inline_table => "",
        _ if !ident.is_empty() => ident,
        Some((k, _)) => k
            .trim_end()
            .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
            .next()
            .unwrap_or(""),
        None => text[offset..]
            .split(|c: char| c == '=' || c == '\n' || c.is_whitespace())
            .next()
            .unwrap_or(""),
    }
    .to_string();
    let mut path = vm_path(table, vm_name.as_deref());
    let mut push = |part: &str| {
        if !part.is_empty() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
        }
    };
    let element = |array_key: &str, index: Option<usize>| match index {
        Some(i) => format!("{array_key}[{i}]"),
        None => array_key.to_string(),
    };
    if let Some((array_key, elements, _)) = &array {
        // An element on a line of its own.
        let line = text[line_start..].lines().next().unwrap_or("");
        let index = line
            .trim_start()
            .starts_with(['{', '['])
            .then_some(*elements);
        push(&element(array_key, index));
    } else if let Some(open) = before.find("= [").or_else(|| before.find("=[")) {
        // An array on the offending value's line: `phases = [{ … }, { … }]`.
        let array_key = before[..open].trim_end().rsplit(char::is_whitespace).next();
        // Elements opened before the offset, inside the array's own `[` (not brackets
        // within an element: `{ at = "1h", tags = ["a"] }` is one).
        let inside = before[open..].split_once('[').map_or("", |(_, rest)| rest);
        let (mut opened, mut depth) = (0usize, 0usize);
        for c in inside.chars() {
            match c {
                '{' | '[' => {
                    opened += usize::from(depth == 0);
                    depth += 1;
                }
                '}' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        let index = if at_inline_table {
            Some(opened)
        } else {
            opened.checked_sub(1)
        };
        push(&element(array_key.unwrap_or(""), index));
    } else if let Some(open) = before.find("= {").or_else(|| before.find("={")) {
        // A key of an inline table on the offending value's line: `virtio_mem = { bogus = 1 }`.
        push(
            before[..open]
                .trim_end()
                .rsplit(char::is_whitespace)
                .next()
                .unwrap_or(""),
        );
    } else if at_inline_table {
        // A field missing from an inline table: the table is the answer.
        let table_key = before.trim_end().trim_end_matches('=').trim_end();
        push(table_key.rsplit(char::is_whitespace).next().unwrap_or(""));
    }
    push(&key);
    path
}

/// `vm[0].workload` → `vm[0] (web).workload`, once the VM's name is known.
fn vm_path(table: String, vm_name: Option<&str>) -> String {
    match (vm_name, table.strip_prefix("vm[")) {
        (Some(name), Some(rest)) => {
            let (index, tail) = rest.split_once(']').unwrap_or((rest, ""));
            format!("vm[{index}] ({name}){tail}")
        }
        _ => table,
    }
}

/// What is wrong with a policy interval on a simulation of this tick, if anything: the
/// engine runs the policy on whole ticks, and the policy sizes its rooms from the interval
/// it is told, so an interval that is not a whole number of ticks would size them for a
/// cadence that never runs.
pub fn interval_problem(interval: Millis, tick: Millis) -> Option<String> {
    if interval == Millis::ZERO {
        Some("must be positive".into())
    } else if interval < tick || !interval.0.is_multiple_of(tick.0) {
        Some(format!("must be a whole number of ticks (tick {tick})"))
    } else if interval > Millis::secs(3600) {
        Some("must be at most 1h".into())
    } else {
        None
    }
}

impl RawScenario {
    pub fn validate(self, text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let invalid = |line: usize, key: String, message: String| ScenarioError::Invalid {
            path: path.to_path_buf(),
            line,
            key,
            message,
        };
        let host_line = text.find("[host]").map_or(1, |o| line_of(text, o));
        let migration_line = text.find("[migration]").map_or(1, |o| line_of(text, o));
        let meta_line = text.find("[scenario]").map_or(1, |o| line_of(text, o));
        let h = &self.host;
        if self.scenario.duration == Millis::ZERO {
            return Err(invalid(
                meta_line,
                "scenario.duration".into(),
                "must be positive".into(),
            ));
        }
        if self.scenario.name.trim().is_empty() {
            return Err(invalid(
                meta_line,
                "scenario.name".into(),
                "must not be empty: it names the scenario in every table and file".into(),
            ));
        }
        let tick = self.scenario.tick.unwrap_or(Millis::secs(1));
        if tick == Millis::ZERO || tick > Millis::secs(60) {
            return Err(invalid(
                meta_line,
                "scenario.tick".into(),
                "must be between 1ms and 60s".into(),
            ));
        }
        if let Some(why) = self
            .scenario
            .interval
            .and_then(|i| interval_problem(i, tick))
        {
            return Err(invalid(meta_line, "scenario.interval".into(), why));
        }
        if self.scenario.duration < tick {
            return Err(invalid(
                meta_line,
                "scenario.duration".into(),
                format!("shorter than one tick ({tick}): nothing would run"),
            ));
        }
        if self.scenario.duration.0 / tick.0 > 100_000_000 {
            return Err(invalid(
                meta_line,
                "scenario.duration".into(),
                "more than 10^8 ticks".into(),
            ));
        }
        if h.memory == Bytes::ZERO {
            return Err(invalid(
                host_line,
                "host.memory".into(),
                "must be positive".into(),
            ));
        }
        if h.reserve >= h.memory {
            return Err(invalid(
                host_line,
                "host.reserve".into(),
                format!(
                    "reserve {} is not below host memory {}",
                    h.reserve, h.memory
                ),
            ));
        }
        let system = h.system.unwrap_or(Bytes(h.reserve.0 / 2));
        if system >= h.memory {
            return Err(invalid(
                host_line,
                "host.system".into(),
                "not below host memory".into(),
            ));
        }
        let ksm = h.ksm.unwrap_or(0.0);
        if !(0.0..=0.9).contains(&ksm) {
            return Err(invalid(
                host_line,
                "host.ksm".into(),
                "must be a fraction in [0, 0.9]".into(),
            ));
        }
        let ksm_control = h.ksm_control.unwrap_or_default();
        if ksm_control == KsmControl::Mom && ksm == 0.0 {
            return Err(invalid(
                host_line,
                "host.ksm_control".into(),
                "\"mom\" runs KSM by MoM's rule, but `host.ksm` (what KSM can merge) is 0".into(),
            ));
        }
        let swap_bandwidth = h.swap_bandwidth.map_or(Bytes::mib(200), |r| r.0);
        if swap_bandwidth == Bytes::ZERO {
            return Err(invalid(
                host_line,
                "host.swap_bandwidth".into(),
                "must be positive".into(),
            ));
        }
        let host = HostSpec {
            memory: h.memory,
            reserve: h.reserve,
            swap: h.swap.unwrap_or(Bytes::ZERO),
            swap_bandwidth,
            system,
            vm_overhead: h.vm_overhead.unwrap_or(Bytes::mib(64)),
            ksm,
            ksm_control,
            free_page_reporting: h.free_page_reporting,
        };

        let mut vms = Vec::new();
        let mut declared: std::collections::HashSet<String> = Default::default();
        for (i, spanned) in self.vm.into_iter().enumerate() {
            let line = line_of(text, spanned.span().start);
            let v = spanned.into_inner();
            let key = |k: &str| format!("vm[{i}] ({}).{k}", v.name);
            if v.name.is_empty()
                || !v
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    line,
                    format!("vm[{i}].name"),
                    if v.name.is_empty() {
                        "must not be empty".into()
                    } else {
                        format!(
                            "`{}`: only ASCII letters, digits, `-` and `_` are allowed (names label CSV columns)",
                            v.name
                        )
                    },
                ));
            }
            if v.memory < Bytes::mib(128) {
                return Err(invalid(
                    line,
                    key("memory"),
                    "must be at least 128MiB".into(),
                ));
            }
            let kernel = v.kernel.unwrap_or_else(|| default_kernel(v.memory));
            if kernel >= v.memory {
                return Err(invalid(line, key("kernel"), "must be below memory".into()));
            }
            let watermarks = v.min_free.map(|m| match m {
                MinFree::Linux => Watermarks::typical(v.memory),
                MinFree::Set(min_free) => Watermarks::of(v.memory, min_free),
            });
            if let Some(watermarks) = watermarks
                && kernel + watermarks.high >= v.memory
            {
                return Err(invalid(
                    line,
                    key("min_free"),
                    format!(
                        "its high watermark {} plus the guest kernel {kernel} must be below memory",
                        watermarks.high
                    ),
                ));
            }
            let virtio_mem = match &v.virtio_mem {
                None => None,
                Some(raw) => Some(
                    validate_virtio_mem(raw, v.memory, kernel)
                        .map_err(|(k, m)| invalid(line, key(&format!("virtio_mem.{k}")), m))?,
                ),
            };
            if let Some(min) = v.min
                && min > v.memory
            {
                return Err(invalid(
                    line,
                    key("min"),
                    format!("floor {min} is above memory {}", v.memory),
                ));
            }
            if v.swap_bandwidth.is_some_and(|r| r.0 == Bytes::ZERO) {
                return Err(invalid(
                    line,
                    key("swap_bandwidth"),
                    "must be positive".into(),
                ));
            }
            if v.balloon_rate.is_some_and(|r| r.0 == Bytes::ZERO) {
                return Err(invalid(
                    line,
                    key("balloon_rate"),
                    "must be positive".into(),
                ));
            }
            if v.stats_interval == Some(Millis::ZERO) {
                return Err(invalid(
                    line,
                    key("stats_interval"),
                    "must be positive (leave it out for stats every tick)".into(),
                ));
            }
            let priority = v.priority.unwrap_or(1.0);
            if let Some(why) = aerostat_core::priority_problem(priority) {
                return Err(invalid(line, key("priority"), why));
            }
            let pinned = v.pinned.unwrap_or(Bytes::ZERO);
            if pinned > v.memory {
                return Err(invalid(line, key("pinned"), "is above memory".into()));
            }
            if let Some(h) = v.headroom
                && h > v.memory
            {
                return Err(invalid(
                    line,
                    key("headroom"),
                    format!("headroom {h} is above memory {}", v.memory),
                ));
            }
            let count = v.count.unwrap_or(1);
            if count == 0 {
                return Err(invalid(line, key("count"), "must be at least 1".into()));
            }
            let start = v.start.unwrap_or(Millis::ZERO);
            if start >= self.scenario.duration {
                return Err(invalid(
                    line,
                    key("start"),
                    format!(
                        "{start} is not before the end of the run ({}): the VM never starts",
                        self.scenario.duration
                    ),
                ));
            }
            let stagger = v.stagger.unwrap_or(Millis::ZERO);
            // Saturating: a stagger of centuries must be refused, not wrap around.
            let last_start = Millis(
                start
                    .0
                    .saturating_add(stagger.0.saturating_mul(u64::from(count - 1))),
            );
            if last_start >= self.scenario.duration {
                return Err(invalid(
                    line,
                    key("stagger"),
                    format!(
                        "replica {} would start at {last_start}, not before the end of the run ({}): it never starts",
                        count - 1,
                        self.scenario.duration
                    ),
                ));
            }
            // Workload times count from each VM's own start (the engine steps a workload
            // with the time since it started): what the first replica never reaches, none
            // does.
            let lifetime = RunSpan {
                start,
                end: self.scenario.duration,
                tick,
            };
            let mut workload =
                validate_workload(&v.workload, v.memory, kernel, pinned, lifetime, path)
                    .map_err(|(k, m)| invalid(line, key(&format!("workload.{k}")), m))?;
            if workload.at == Millis(u64::MAX) {
                workload.at = Millis(self.scenario.duration.0 / 3);
                // The default is a third of the run, counted from the VM's start like any
                // workload time: a VM starting after two thirds would never reach it.
                if fields_read(workload.kind).contains(&"at") && workload.at >= lifetime.len() {
                    return Err(invalid(
                        line,
                        key("workload.at"),
                        format!(
                            "not set, and its default ({}, a third of the run, counted from the VM's start at {start}) is past the end of the run: set it",
                            workload.at
                        ),
                    ));
                }
            }
            if vms.len() + count as usize > MAX_VMS {
                return Err(invalid(
                    line,
                    key("count"),
                    format!("more than {MAX_VMS} VMs in all"),
                ));
            }
            for r in 0..count {
                let name = if v.count.is_some() {
                    format!("{}-{r}", v.name)
                } else {
                    v.name.clone()
                };
                if !declared.insert(name.clone()) {
                    return Err(invalid(
                        line,
                        format!("vm[{i}].name"),
                        format!("duplicate VM name `{name}`"),
                    ));
                }
                vms.push(VmSpec {
                    name,
                    memory: v.memory,
                    min: v.min,
                    swap: v.swap.unwrap_or(Bytes::ZERO),
                    swap_bandwidth: v.swap_bandwidth.map_or(Bytes::mib(200), |r| r.0),
                    priority,
                    shares: v.shares.unwrap_or(1000),
                    class: v.class.unwrap_or_default(),
                    headroom: v.headroom,
                    start: Millis(start.0 + stagger.0 * u64::from(r)),
                    balloon: v.balloon.unwrap_or(true),
                    deflate_on_oom: v.deflate_on_oom,
                    balloon_lies: v.balloon_lies,
                    stats: v.stats.unwrap_or_default(),
                    stats_interval: v.stats_interval,
                    balloon_rate: v.balloon_rate.map_or(Bytes::gib(1), |r| r.0),
                    kernel,
                    pinned,
                    watermarks,
                    virtio_mem,
                    workload: workload.clone(),
                });
            }
        }
        if vms.is_empty() {
            return Err(invalid(
                1,
                "vm".into(),
                "a scenario needs at least one [[vm]]".into(),
            ));
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = vms.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(invalid(
                1,
                "vm.name".into(),
                format!("duplicate VM name `{}`", w[0].name),
            ));
        }
        let kernels: Bytes = vms.iter().map(|v| v.kernel.min(v.memory)).sum();
        let floors: Bytes = vms
            .iter()
            .map(|v| v.floor().unwrap_or(Bytes::ZERO).max(v.kernel) + host.vm_overhead)
            .sum();
        if host.reserve + floors > host.memory + host.swap {
            return Err(invalid(
                host_line,
                "host.memory".into(),
                format!(
                    "the guests' floors ({floors}, kernels {kernels}) plus the reserve {} exceed host memory {} + swap {}",
                    host.reserve, host.memory, host.swap
                ),
            ));
        }
        // The host's own processes are always resident (`host.system`): with the floors they
        // must fit too, or every policy loses a VM to the host OOM killer.
        if host.system + floors > host.memory + host.swap {
            return Err(invalid(
                host_line,
                "host.system".into(),
                format!(
                    "the host's own processes ({}) plus the guests' floors ({floors}, kernels {kernels}) exceed host memory {} + swap {}",
                    host.system, host.memory, host.swap
                ),
            ));
        }
        // QEMU's own memory is never ballooned nor swapped by the model: a host that cannot
        // hold it with the reserve OOM-kills its guests at once under any policy.
        let overheads = Bytes(host.vm_overhead.0.saturating_mul(vms.len() as u64));
        if host.reserve + overheads >= host.memory {
            return Err(invalid(
                host_line,
                "host.memory".into(),
                format!(
                    "the VMs' QEMU overheads ({} × {} = {overheads}) plus the reserve {} leave nothing of host memory {} for the guests",
                    vms.len(),
                    host.vm_overhead,
                    host.reserve,
                    host.memory
                ),
            ));
        }
        let migration = match &self.migration {
            None => None,
            Some(m) => Some(
                validate_migration(m)
                    .map_err(|(k, msg)| invalid(migration_line, format!("migration.{k}"), msg))?,
            ),
        };
        Ok(Scenario {
            migration,
            name: self.scenario.name,
            description: self.scenario.description.unwrap_or_default(),
            duration: self.scenario.duration,
            seed: self.scenario.seed,
            tick,
            interval: self.scenario.interval,
            host,
            vms,
        })
    }
}

/// A virtio-mem device's boot memory and block size, as QEMU would take them.
fn validate_virtio_mem(
    raw: &RawVirtioMem,
    memory: Bytes,
    kernel: Bytes,
) -> Result<VirtioMem, (String, String)> {
    let block = raw.block.unwrap_or(Bytes::mib(2));
    if raw.boot <= kernel || raw.boot >= memory {
        return Err((
            "boot".into(),
            format!(
                "boot memory {} must be above the guest kernel {kernel} and below memory {memory}",
                raw.boot
            ),
        ));
    }
    if !block.0.is_power_of_two() || block < Bytes::kib(4) {
        return Err((
            "block".into(),
            format!("{block} is not a power of two of at least 4KiB (QEMU's default: 2MiB)"),
        ));
    }
    let device = memory - raw.boot;
    if !device.0.is_multiple_of(block.0) {
        return Err((
            "block".into(),
            format!(
                "the device (memory − boot = {device}) is not a whole number of {block} blocks"
            ),
        ));
    }
    Ok(VirtioMem {
        boot: raw.boot,
        block,
    })
}

fn validate_migration(m: &RawMigration) -> Result<MigrationSpec, (String, String)> {
    let d = MigrationSpec::default();
    let bandwidth = m.bandwidth.map_or(d.bandwidth, |r| r.0);
    if bandwidth == Bytes::ZERO {
        return Err(("bandwidth".into(), "must be positive".into()));
    }
    let downtime = m.downtime.unwrap_or(d.downtime);
    let max_time = m.max_time.unwrap_or(d.max_time);
    if let Some((key, why)) = aerostat_core::planner::migration::timing_problem(downtime, max_time)
    {
        return Err((key.into(), why));
    }
    let thrash_limit = m.thrash_limit.map(|r| r.0);
    if thrash_limit == Some(Bytes::ZERO) {
        return Err(("thrash_limit".into(), "must be positive".into()));
    }
    let peers = m.peers.unwrap_or(d.peers);
    if peers == 0 {
        return Err((
            "peers".into(),
            "must be at least 1 (turn the escape off with `escape = false`)".into(),
        ));
    }
    Ok(MigrationSpec {
        escape: m.escape,
        grace: m.grace.unwrap_or(d.grace),
        bandwidth,
        downtime,
        max_time,
        postcopy: m.postcopy.unwrap_or(d.postcopy),
        thrash_limit,
        peers,
    })
}

/// `pinned` memory (huge pages, VFIO) is the guest's but not the workload's: the guest model
/// keeps `kernel + pinned` out of what the workload may use.
/// The workload fields each kind reads, besides those every kind reads (`kind`, `cold`,
/// `noise`, `cache_hot`, `dirty_rate`).
fn fields_read(kind: WorkloadKind) -> &'static [&'static str] {
    match kind {
        WorkloadKind::Steady | WorkloadKind::Idle => &["working_set", "page_cache"],
        WorkloadKind::Diurnal => &["working_set", "peak", "period", "phase", "page_cache"],
        WorkloadKind::Burst => &["working_set", "peak", "at", "rise", "hold", "page_cache"],
        WorkloadKind::Ramp => &["working_set", "peak", "at", "rise", "page_cache"],
        WorkloadKind::Leak => &["working_set", "rate", "page_cache"],
        WorkloadKind::Boot => &["working_set", "peak", "hold", "page_cache"],
        // `page_cache` is the phases' default.
        WorkloadKind::Phases => &["phases", "page_cache"],
        // The trace's rows carry the page cache.
        WorkloadKind::Trace => &["trace"],
    }
}

/// The kind-specific fields set in `w`, by name.
fn fields_set(w: &RawWorkload) -> [(&'static str, bool); 10] {
    [
        ("working_set", w.working_set.is_some()),
        ("peak", w.peak.is_some()),
        ("period", w.period.is_some()),
        ("phase", w.phase.is_some()),
        ("page_cache", w.page_cache.is_some()),
        ("at", w.at.is_some()),
        ("rise", w.rise.is_some()),
        ("hold", w.hold.is_some()),
        ("rate", w.rate.is_some()),
        ("phases", w.phases.is_some()),
    ]
}

/// A VM's time in the run: from its start (the first replica's) to the end of the run.
#[derive(Clone, Copy)]
struct RunSpan {
    start: Millis,
    end: Millis,
    /// The simulator's tick: shapes must be slower than it to be seen.
    tick: Millis,
}

impl RunSpan {
    /// How long the workload runs: workload times count from the VM's start.
    fn len(self) -> Millis {
        self.end.saturating_sub(self.start)
    }
}

fn validate_workload(
    w: &RawWorkload,
    memory: Bytes,
    kernel: Bytes,
    pinned: Bytes,
    span: RunSpan,
    scenario_path: &Path,
) -> Result<WorkloadSpec, (String, String)> {
    let duration = span.len();
    let err = |k: &str, m: String| Err((k.to_string(), m));
    let usable = memory - kernel - pinned;
    // A field the kind never reads is a mistake the run would hide (`peak` on a steady
    // workload runs as if it were not there).
    let reads = fields_read(w.kind);
    let trace_set = ("trace", w.trace.is_some());
    for (field, set) in fields_set(w).into_iter().chain([trace_set]) {
        if set && !reads.contains(&field) {
            return err(
                field,
                format!(
                    "does not apply to kind `{}` (it reads: {}, and cold, noise, cache_hot, dirty_rate)",
                    w.kind.as_str(),
                    reads.join(", ")
                ),
            );
        }
    }
    let never = |field: &str, at: Millis| {
        let message = if span.start == Millis::ZERO {
            format!("{at} is not before the end of the run ({duration}): it never happens")
        } else {
            format!(
                "{at} after the VM starts (at {}) is not before the end of the run ({}): it never happens (workload times count from the VM's start)",
                span.start, span.end
            )
        };
        err(field, message)
    };
    if let Some(at) = w.at
        && at >= duration
    {
        return never("at", at);
    }
    let phases = w.phases.as_deref().unwrap_or_default();
    if let Some(p) = phases.iter().skip(1).position(|p| p.at >= duration) {
        return never(&format!("phases[{}].at", p + 1), phases[p + 1].at);
    }
    let too_much_cache = |field: &str, cache: Bytes| {
        err(
            field,
            format!(
                "{cache} is above usable memory {usable} (memory less the guest kernel{}): it could never be resident",
                if pinned > Bytes::ZERO {
                    " and pinned memory"
                } else {
                    ""
                }
            ),
        )
    };
    if let Some(c) = w.page_cache
        && c > usable
    {
        return too_much_cache("page_cache", c);
    }
    if let Some((i, c)) = w
        .phases
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .find_map(|(i, p)| p.page_cache.filter(|c| *c > usable).map(|c| (i, c)))
    {
        return too_much_cache(&format!("phases[{i}].page_cache"), c);
    }
    let minus_pinned = if pinned > Bytes::ZERO {
        format!(" and the pinned {pinned}")
    } else {
        String::new()
    };
    let working_set = w.working_set.unwrap_or(Bytes::ZERO);
    let needs_ws = !matches!(w.kind, WorkloadKind::Trace | WorkloadKind::Phases);
    if needs_ws && w.working_set.is_none() {
        return err("working_set", "required for this workload kind".into());
    }
    if working_set > usable {
        return err(
            "working_set",
            format!(
                "{working_set} is above the configured memory {memory} minus the guest kernel {kernel}{minus_pinned}"
            ),
        );
    }
    let needs_peak = matches!(
        w.kind,
        WorkloadKind::Diurnal | WorkloadKind::Burst | WorkloadKind::Ramp | WorkloadKind::Boot
    );
    let peak = match w.peak {
        Some(p) => p,
        None if needs_peak => return err("peak", "required for this workload kind".into()),
        None => working_set,
    };
    if peak > usable {
        return err(
            "peak",
            format!(
                "{peak} is above the configured memory {memory} minus the guest kernel {kernel}{minus_pinned}"
            ),
        );
    }
    if needs_peak && peak < working_set {
        return err("peak", format!("{peak} is below working_set {working_set}"));
    }
    let cache_hot = w.cache_hot.unwrap_or(0.3);
    if !(0.0..=1.0).contains(&cache_hot) {
        return err("cache_hot", "must be a fraction in [0, 1]".into());
    }
    let noise = w.noise.unwrap_or(0.02);
    if !(0.0..=0.5).contains(&noise) {
        return err("noise", "must be a fraction in [0, 0.5]".into());
    }
    let period = w.period.unwrap_or(Millis::secs(86_400));
    if period == Millis::ZERO {
        return err("period", "must be positive".into());
    }
    if w.kind == WorkloadKind::Diurnal && period.0 < 2 * span.tick.0 {
        return err(
            "period",
            format!(
                "{period} is shorter than two simulator ticks ({}): sampled once a tick the cycle would alias",
                span.tick
            ),
        );
    }
    let cold = w.cold.unwrap_or(Bytes::ZERO);
    if cold + peak.max(working_set) > usable {
        return err(
            "cold",
            format!("cold {cold} + working set exceed usable memory {usable}"),
        );
    }
    let leak_per_hour = w.rate.map_or(Bytes::ZERO, |r| r.0);
    if w.kind == WorkloadKind::Leak && leak_per_hour == Bytes::ZERO {
        let problem = match w.rate {
            None => "required for a leak (e.g. \"100MiB/h\")",
            Some(_) => {
                "must be positive for a leak (e.g. \"100MiB/h\"); a guest that does not grow is `steady`"
            }
        };
        return err("rate", problem.into());
    }
    let mut points = Vec::new();
    match w.kind {
        WorkloadKind::Phases => {
            let phases = w.phases.as_deref().unwrap_or_default();
            if phases.is_empty() {
                return err("phases", "at least one phase is required".into());
            }
            for (i, p) in phases.iter().enumerate() {
                if p.working_set > usable {
                    return err(
                        &format!("phases[{i}].working_set"),
                        format!("{} is above usable memory {usable}", p.working_set),
                    );
                }
                points.push((
                    p.at,
                    p.working_set,
                    p.page_cache.unwrap_or(w.page_cache.unwrap_or(Bytes::ZERO)),
                ));
            }
            if !points.windows(2).all(|p| p[0].0 < p[1].0) {
                return err("phases", "phases must be in increasing `at` order".into());
            }
        }
        WorkloadKind::Trace => {
            let Some(trace) = &w.trace else {
                return err(
                    "trace",
                    "a trace workload needs `trace = \"file.csv\"`".into(),
                );
            };
            let file = scenario_path.parent().unwrap_or(Path::new(".")).join(trace);
            points = crate::workload::load_trace(&file, usable).map_err(|m| {
                (
                    "trace".to_string(),
                    if trace.is_absolute() {
                        format!("{m} (`trace = \"{}\"`)", trace.display())
                    } else {
                        format!(
                            "{m} (`trace = \"{}\"`, relative to the scenario's directory)",
                            trace.display()
                        )
                    },
                )
            })?;
        }
        _ => {}
    }
    // The most anonymous memory the workload asks for: its largest working set at the top
    // of its noise, its cold memory, and what a leak adds by the end of the run. More than
    // the guest can hold OOM-kills it under any policy, `static` included.
    let largest = points
        .iter()
        .map(|p| p.1)
        .max()
        .unwrap_or(Bytes::ZERO)
        .max(peak)
        .max(working_set);
    let noisy = Bytes::from_f64(largest.as_f64() * (1.0 + noise));
    if noise > 0.0 && noisy + cold > usable {
        return err(
            "noise",
            format!(
                "the working set {largest} at the top of its noise ({noisy}) plus cold {cold} is above usable memory {usable}: the guest would be OOM-killed whatever the policy"
            ),
        );
    }
    let leaked = Bytes::from_f64(leak_per_hour.as_f64() * duration.as_secs_f64() / 3600.0);
    if leaked > Bytes::ZERO && noisy + cold + leaked > usable {
        return err(
            "rate",
            format!(
                "the leak adds {leaked} by the end of the run: with the working set ({noisy} at the top of its noise) and cold {cold}, more than usable memory {usable}"
            ),
        );
    }
    Ok(WorkloadSpec {
        kind: w.kind,
        working_set,
        peak,
        period,
        page_cache: w.page_cache.unwrap_or(Bytes::ZERO),
        cache_hot,
        cold,
        at: w.at.unwrap_or(Millis(u64::MAX)),
        rise: w.rise.unwrap_or(Millis::secs(60)),
        hold: w.hold.unwrap_or(if w.kind == WorkloadKind::Boot {
            Millis::secs(120)
        } else {
            Millis::secs(3600)
        }),
        leak_per_hour,
        noise,
        phase: w.phase.unwrap_or(Millis::ZERO),
        points,
        dirty_rate: w.dirty_rate.map(|r| r.0),
    })
}
