//! The command-line surface: one enum of commands, parsing kept apart from running.

use std::path::PathBuf;

use aerostat_core::PolicyKind;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "aerostat",
    version,
    about = "Memory-overcommit controller for KVM/QEMU hosts, with a deterministic simulator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate a host with a policy (default: the built-in demo scenario).
    Sim(SimArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print a policy's decision for one observation (or a history of them) as JSON.
    Decide(DecideArgs),
    /// The daemon: drive real QEMU guests through QMP.
    Run(RunArgs),
    /// Ask the running daemon what it sees, as a table.
    Status(StatusArgs),
    /// Ask the running daemon whether one more guest may start on its host (for a libvirt
    /// hook or a placement filter). Exit 0: admitted; 1: refused; 2: bad flags; 3: no answer.
    Admit(AdmitArgs),
    /// Live-migrate a QEMU guest, switching to post-copy when pre-copy will not land.
    Migrate(MigrateArgs),
    /// Capacity planning: the largest safe overcommit ratio R_max (working-set deficit
    /// model), checked by simulating the scenario scaled to several ratios.
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Scenario file (TOML). Without one, the built-in demo scenario (as `aerostat sim`).
    pub scenario: Option<PathBuf>,
    /// Overcommit ratios to simulate (Σ configured ÷ (host memory − reserve)), comma-separated.
    #[arg(long, default_value = "1.0,1.25,1.5,1.75,2.0")]
    pub ratios: String,
    /// Simulated duration of each run: the scenario's own (default) or shorter.
    #[arg(long)]
    pub duration: Option<String>,
    #[arg(long, default_value = "aerostat")]
    pub policy: PolicyKind,
    /// Directory for plan.json and plan.svg.
    #[arg(long, default_value = "out/plan")]
    pub out: PathBuf,
    /// Swap device bandwidth (default: the scenario's `host.swap_bandwidth`); also used by
    /// the simulated runs.
    #[arg(long)]
    pub swap_bandwidth: Option<String>,
    /// Fraction of the swap bandwidth that swap I/O may use and stay safe.
    #[arg(long, default_value = "0.5")]
    pub safe_fraction: String,
    /// Swap I/O per second caused by one byte of working-set deficit (default 0.2: a
    /// missing hot page is re-touched at 10 %/s, and each read pushes one page out).
    #[arg(long)]
    pub swap_io_per_deficit: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The source VM's QMP socket.
    pub vm: PathBuf,
    /// Migration URI for QEMU's `migrate` (`tcp:HOST:PORT`, `unix:PATH`).
    #[arg(long)]
    pub to: String,
    /// The destination's QMP socket: enables post-copy (set on both sides) and lets the
    /// switch check that the destination is alive first. Without it, pre-copy only.
    #[arg(long)]
    pub dest_qmp: Option<PathBuf>,
    /// Longest acceptable pause of the guest (QEMU's `downtime-limit`).
    #[arg(long, default_value = "300ms")]
    pub downtime: String,
    /// Budget for the whole migration; pre-copy that cannot switch is cancelled at it.
    #[arg(long, default_value = "60s")]
    pub max_time: String,
    /// Budget for the bytes on the wire (a metered or shared link, e.g. `20GiB`): pre-copy
    /// that would send more moves to post-copy, or is cancelled when it cannot. Default: none.
    #[arg(long)]
    pub max_bytes: Option<String>,
    /// Bandwidth cap for both pre-copy and post-copy (`max-bandwidth`,
    /// `max-postcopy-bandwidth`).
    #[arg(long, default_value = "128MiB/s")]
    pub bandwidth: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// `quit` the source QEMU once the migration completed.
    #[arg(long)]
    pub quit_source: bool,
    /// Force a strategy instead of the planner's choice (for comparisons):
    /// pre-copy, auto-converge, post-copy-after-first-pass, post-copy-at-once.
    #[arg(long)]
    pub strategy: Option<String>,
    /// Dirty-rate measurement before planning, seconds (0: skip, assume 0).
    #[arg(long, default_value_t = 1)]
    pub measure_secs: u32,
    /// A device (`-device …,id=ID`) QEMU will not migrate: unplugged from the guest before
    /// the migration, once the guest let go. Repeat for more.
    #[arg(long, value_name = "ID")]
    pub unplug: Vec<String>,
    /// A QMP step that plugs an unplugged device back, run on the destination after a
    /// completed migration (needs --dest-qmp) and on the source after any other end:
    /// '{"execute": "device_add", "arguments": {"driver": "vfio-pci", "host": "…", "id": "nic0"}}'.
    /// One of device_add, object-add, blockdev-add, netdev_add, chardev-add. Repeat, in order.
    #[arg(long, value_name = "JSON")]
    pub replug: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Daemon configuration (TOML); see docs/config.md.
    #[arg(long)]
    pub config: PathBuf,
    /// Decide and log, but never touch a balloon.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct AdmitArgs {
    /// The daemon's API address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub api: String,
    /// The new guest's memory (configured maximum), e.g. 8GiB.
    #[arg(long)]
    pub memory: String,
    /// Its name: its `[vm.NAME]` settings (min, overhead) are the defaults.
    #[arg(long)]
    pub name: Option<String>,
    /// Its floor (default: the config's min).
    #[arg(long)]
    pub min: Option<String>,
    /// Host memory it costs beyond guest memory (default: the config's overhead).
    #[arg(long)]
    pub overhead: Option<String>,
    /// What it is expected to use once running (default: its floor).
    #[arg(long)]
    pub need: Option<String>,
    /// It has neither a balloon nor virtio-mem: all its memory counts, never overcommitted.
    #[arg(long)]
    pub not_resizable: bool,
    /// Print the daemon's JSON answer instead of one line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's API address.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub api: String,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Scenario file (TOML). Without one, the built-in demo scenario runs.
    pub scenario: Option<PathBuf>,
    #[arg(long, default_value = "aerostat")]
    pub policy: PolicyKind,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory for summary.json, timeseries.csv and the SVG plots.
    #[arg(long, default_value = "out/sim")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Run the host without the scenario's live-migration escape (`[migration] escape`),
    /// to see what it avoided.
    #[arg(long)]
    pub no_escape: bool,
    /// Stop after this much simulated time (e.g. `30m`), no longer than the scenario's
    /// `duration`: a quick check of a long scenario.
    #[arg(long)]
    pub duration: Option<String>,
    /// Sample the time series every DURATION of simulated time (e.g. `1s`: every tick)
    /// instead of 1,000 times over the run: a close look at a burst, with `--duration`
    /// to end the run just after it.
    #[arg(long, value_name = "DURATION")]
    pub every: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Every policy on every scenario: one comparison table, bench.json and bench.md.
    Policies(BenchPoliciesArgs),
    /// Simulator speed: VM-ticks per second, single host and fleet.
    Sim(BenchSimArgs),
}

#[derive(Debug, Args)]
pub struct BenchPoliciesArgs {
    /// Scenario files (default: every *.toml in scenarios/).
    pub scenarios: Vec<PathBuf>,
    /// Output directory for bench.json and bench.md.
    #[arg(long, default_value = "out/bench")]
    pub out: PathBuf,
    /// Stop each scenario after this much simulated time (e.g. `30m`; a scenario shorter
    /// than that runs whole): a quick check.
    #[arg(long)]
    pub duration: Option<String>,
}

#[derive(Debug, Args)]
pub struct BenchSimArgs {
    /// Hosts in the fleet run (at most 100,000: each holds its whole simulation in memory).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub hosts: u64,
    /// Simulated duration of each run (at most the demo scenario's 24 h).
    #[arg(long, default_value = "6h")]
    pub duration: String,
    /// Worker threads for the fleet run (default: all cores; at most 1,024 — more only
    /// spends the run creating threads).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
    /// How often every policy decides, e.g. `10s` (default: each policy's own: aerostat 1 s,
    /// static and Proxmox 10 s, MoM 15 s). The guests are still advanced every simulated
    /// second.
    #[arg(long)]
    pub interval: Option<String>,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    #[arg(long)]
    pub policy: PolicyKind,
    /// JSON: one observation, an array of observations (oldest first), or
    /// `{"settings": {...}, "observations": [...]}`.
    #[arg(long)]
    pub observation: PathBuf,
}
