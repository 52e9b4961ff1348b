//! `aerostat run`: the daemon. Every `interval`: discover QMP sockets, observe the host
//! and every VM, let the same [`Controller`] the simulator runs decide, apply its actions
//! through QMP, and publish what happened (decision lines on stdout, `/metrics`, `/status`).
//!
//! A failure for one VM never stops the loop: it is logged, counted, and retried next
//! tick. A VM that does not answer this tick stays in the observation with its last known
//! sample and `balloon = false` (so it counts toward the host's memory but gets no action).
//! On SIGTERM or Ctrl-C the loop stops and the process exits 0, leaving every balloon where
//! it is; a restart adopts them (the controller starts from each balloon's `actual` and
//! moves it at most one step per tick).

pub mod admission;
pub mod api;
pub mod config;
mod escape;
mod ksm;
pub mod metrics;
mod swap_rates;
mod vms;

use std::io::Write as _;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aerostat_core::{
    Controller, Decision, HostSample, Millis, Observation, PolicySettings, VmSample,
};
use aerostat_host::{CgroupHost, ProcHost};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

pub use config::Config;
use escape::EscapeRunner;
use metrics::Metrics;
use vms::VmRegistry;

/// What `/status` returns (schema in `docs/status.md`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub policy: String,
    pub interval_ms: u64,
    pub dry_run: bool,
    pub ticks: u64,
    /// Epoch milliseconds of the last tick.
    pub time: u64,
    pub host: Option<HostSample>,
    /// Host total − reserve + what KSM saves − what balloons keep beyond their claims: what
    /// guests (and their overheads) may hold (docs/status.md).
    pub capacity: u64,
    /// Room for one more guest: `capacity` less the running guests' targets (or sizes) and
    /// overheads, as `GET /admit` counts them (docs/admission.md). `None` before a tick.
    #[serde(default)]
    pub room: Option<u64>,
    pub vms: Vec<VmStatus>,
    /// Sockets the glob finds whose VM is not adopted (yet): being adopted, or failed and
    /// retried every 5 s. What a live QEMU behind one holds is taken out of `capacity`
    /// (docs/status.md).
    #[serde(default)]
    pub unadopted: Vec<Unadopted>,
    pub alerts: Vec<aerostat_core::Alert>,
}

/// A socket whose VM is not adopted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unadopted {
    pub name: String,
    pub socket: String,
    /// Why the last adoption failed; `None` while the first is under way.
    pub error: Option<String>,
    /// The process listening on the socket (`SO_PEERCRED`), once an attempt connected; kept
    /// while it lives when later attempts cannot connect.
    #[serde(default)]
    pub pid: Option<u32>,
    /// What that QEMU holds in RAM (`VmRSS + HugetlbPages`), bytes, where the host charges
    /// it: `host.unmanaged`. `None` without a pid, for a process that is not a QEMU or is
    /// outside the daemon's cgroup, or one counted already.
    #[serde(default)]
    pub memory: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmStatus {
    pub name: String,
    pub socket: String,
    pub configured: u64,
    pub actual: u64,
    pub target: Option<u64>,
    pub floor: u64,
    pub responsive: bool,
    /// On its way out (the memory-pressure escape is migrating it).
    #[serde(default)]
    pub migrating: bool,
    /// Whether the escape may move it (`VmSample::migratable`).
    #[serde(default = "movable")]
    pub migratable: bool,
    /// Why QEMU would refuse to migrate it now (`query-migrate`'s `blocked-reasons`).
    #[serde(default)]
    pub migration_blockers: Vec<String>,
    pub last_rule: Option<String>,
    pub last_reason: Option<String>,
    pub last_error: Option<String>,
    pub errors: u64,
    pub stats: aerostat_core::GuestStats,
    /// The last coldness measurement (only for VMs with declared guest swap).
    #[serde(default)]
    pub coldness: Option<aerostat_core::Coldness>,
    /// The VM's virtio-mem devices, if it has any aerostat resizes.
    #[serde(default)]
    pub virtio_mem: Option<VirtioMemStatus>,
    /// Who is swapping its memory, the guest or the host (`aerostat_core::swapping`), from
    /// this tick's and the last tick's counters.
    #[serde(default)]
    pub swapping: Option<aerostat_core::swapping::Swapping>,
}

/// What a `/status` without `migratable` (an older daemon) meant: movable.
fn movable() -> bool {
    true
}

/// A VM's virtio-mem devices, added up (`/status`; only for VMs that have them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMemStatus {
    /// Boot memory: the balloon's part; `actual` = the balloon's `actual` + `plugged`.
    pub boot: u64,
    /// Memory the devices plug now.
    pub plugged: u64,
    /// What aerostat asked them to plug.
    pub requested: u64,
    /// The most they can plug.
    pub max: u64,
}

/// Where host memory comes from: the machine, or a memory cgroup standing for the host.
enum HostProbe {
    Proc(ProcHost),
    Cgroup(CgroupHost),
}

impl HostProbe {
    fn sample(&self) -> anyhow::Result<HostSample> {
        Ok(match self {
            HostProbe::Proc(p) => p.sample()?,
            HostProbe::Cgroup(c) => c.sample()?.host,
        })
    }

    /// Whether process `pid`'s memory is this host's.
    fn charges(&self, pid: u32) -> bool {
        match self {
            HostProbe::Proc(_) => true,
            HostProbe::Cgroup(c) => c.charges(pid),
        }
    }
}

/// The daemon's clock: wall-clock milliseconds at start, advanced by a monotonic clock. The
/// controller's holds and the escape's grace period are durations between observations; an
/// NTP step of the wall clock must not shorten or stretch them.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch_at_start: u64,
    start: Instant,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            epoch_at_start: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            start: Instant::now(),
        }
    }

    fn now(&self) -> Millis {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Millis(self.epoch_at_start.saturating_add(elapsed))
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(config: Config, dry_run: bool) -> anyhow::Result<()> {
    let host = match &config.cgroup {
        Some(path) => HostProbe::Cgroup(
            CgroupHost::open(path).with_context(|| format!("host.cgroup {}", path.display()))?,
        ),
        None => HostProbe::Proc(ProcHost::default()),
    };
    let first = host.sample().context("reading host memory")?;
    // A reserve the host cannot hold (a `TiB` typed for `MiB`) would have every guest
    // squeezed toward its floor and the escape called from the first tick.
    if config.reserve >= first.total {
        anyhow::bail!(
            "`host.reserve` ({}) is not below this host's memory ({}): nothing would be left for the guests",
            config.reserve,
            first.total
        );
    }
    warn_unmatched_vm_tables(&config);
    let settings = PolicySettings {
        reserve: config.reserve,
        interval: config.interval,
        ..PolicySettings::default()
    };
    let mut controller = Controller::new(config.policy.build(&settings));
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(RwLock::new(Status {
        policy: config.policy.as_str().to_string(),
        interval_ms: config.interval.0,
        dry_run,
        ..Status::default()
    }));
    let admission = Arc::new(RwLock::new(None));
    let server = match config.listen {
        Some(addr) => Some(
            api::serve(
                addr,
                api::Shared {
                    status: status.clone(),
                    metrics: metrics.clone(),
                    admission: admission.clone(),
                    pending: Arc::default(),
                    config: Arc::new(config.clone()),
                },
            )
            .await?,
        ),
        None => None,
    };
    tracing::info!(
        policy = config.policy.as_str(),
        interval = %config.interval,
        glob = %config.qmp_glob,
        dry_run,
        "aerostat daemon started"
    );

    let mut registry = VmRegistry::new(&config);
    let mut escape = config.escape.clone().map(|e| EscapeRunner::new(e, &config));
    let mut ksm = config.ksm.as_ref().map(ksm::KsmRunner::new);
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut ticker = tokio::time::interval(Duration::from_millis(config.interval.0));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    // The last tick's observation: the counters the next tick's rates start from.
    let mut previous: Option<Observation> = None;
    let clock = Clock::start();
    loop {
        // Signals first: when ticks overrun the interval the ticker is always ready, and an
        // unbiased select let it win over a pending SIGTERM for up to 15 s (session 34).
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        ticks += 1;
        if let Err(err) = tick(
            &config,
            &host,
            &mut registry,
            &mut controller,
            escape.as_mut(),
            ksm.as_mut(),
            &metrics,
            &status,
            &admission,
            &mut previous,
            dry_run,
            ticks,
            clock,
        )
        .await
        {
            metrics.tick_errors.inc();
            tracing::warn!(error = %format!("{err:#}"), "tick failed; retrying next interval");
        }
        metrics.tick_seconds.set(started.elapsed().as_secs_f64());
    }
    if let Some(e) = escape.as_mut() {
        e.shutdown(&registry).await;
    }
    tracing::info!("shutting down; balloons stay where they are");
    if let Some(server) = server {
        server.abort();
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn tick(
    config: &Config,
    host: &HostProbe,
    registry: &mut VmRegistry,
    controller: &mut Controller,
    escape: Option<&mut EscapeRunner>,
    ksm: Option<&mut ksm::KsmRunner>,
    metrics: &Metrics,
    status: &RwLock<Status>,
    admission: &RwLock<Option<admission::AdmissionInputs>>,
    previous: &mut Option<Observation>,
    dry_run: bool,
    ticks: u64,
    clock: Clock,
) -> anyhow::Result<()> {
    registry.discover(config, metrics, clock.now()).await;
    let mut host_sample = host.sample().context("reading host memory")?;
    // Guests the daemon cannot drive hold memory all the same: the policy counts it out of
    // what its own guests may hold (an unadopted 8 GiB guest was room the fit handed out).
    let unadopted =
        registry.unadopted(|pid| host.charges(pid) && aerostat_qemu::backend::is_qemu(pid));
    host_sample.unmanaged = unadopted
        .iter()
        .filter_map(|u| u.memory)
        .map(aerostat_core::Bytes)
        .sum();
    let now = clock.now();
    let samples = registry.observe(config, metrics, now).await;
    let mut obs = Observation {
        time: now,
        host: host_sample.clone(),
        vms: samples.iter().map(|s| s.sample.clone()).collect(),
    };
    if let Some(e) = escape.as_deref() {
        for vm in &mut obs.vms {
            vm.migrating = e.is_leaving(&vm.name);
        }
    }
    // What the policy was given, for replaying a real guest's story with `aerostat decide`
    // or reading it back (RUST_LOG=aerostat::observation=debug).
    if tracing::enabled!(target: "aerostat::observation", tracing::Level::DEBUG)
        && let Ok(json) = serde_json::to_string(&obs)
    {
        tracing::debug!(target: "aerostat::observation", observation = %json);
    }
    // A guest's first statistics come up to a polling interval after aerostat turns polling
    // on. Until then the policy holds it at its full size, and on a host short of memory
    // the fit squeezed the others below their need for that tick and gave it back the next
    // (CI, session 23: two idle guests inflated 768 → 256 MiB and deflated to 408 a second
    // later, and the deflate's freed pages then read as growth). So no decision is taken
    // while a VM adopted within two polling intervals and a tick has not reported yet:
    // a guest that never reports is decided for after that, as before.
    let grace = Millis::secs(2 * u64::from(config.stats_interval_s)) + config.interval;
    let awaiting = registry.awaiting_first_stats(now, grace);
    let deciding = awaiting.is_empty();
    if !deciding {
        tracing::info!(vms = ?awaiting, "waiting for first guest statistics before deciding");
    }
    let decision = if deciding {
        controller.tick(&obs)
    } else {
        // No actions; the alerts of the last decision stand (an alert that blinked off in
        // /status and the metrics for the wait would say something had changed).
        let alerts = status.read().map(|s| s.alerts.clone()).unwrap_or_default();
        Decision {
            time: now,
            policy: controller.policy_name().into(),
            actions: Vec::new(),
            alerts,
        }
    };
    let capacity = host_sample.capacity(config.reserve) - controller.kept_memory();
    // The escape and KSM go on: they watch the host over many ticks, and a migration under
    // way is theirs to follow.
    let escape_lines = match escape {
        Some(e) => {
            let growth: Vec<aerostat_core::Bytes> = obs
                .vms
                .iter()
                .map(|vm| controller.growth_of(&vm.name, obs.time))
                .collect();
            e.tick(
                &obs,
                capacity,
                controller.unmet_need(),
                &growth,
                registry,
                dry_run,
            )
            .await
        }
        None => Vec::new(),
    };

    let mut stdout = std::io::stdout().lock();
    for action in &decision.actions {
        let mut line = serde_json::to_value(action)?;
        line["time"] = serde_json::json!(now.0);
        line["policy"] = serde_json::json!(decision.policy);
        line["dry_run"] = serde_json::json!(dry_run);
        // A closed stdout (daemon piped into a pager that quit) must not stop the loop.
        let _ = writeln!(stdout, "{line}");
        metrics
            .decisions
            .get_or_create(&metrics::DecisionLabels {
                vm: action.vm.clone(),
                rule: action.rule.as_str().to_string(),
            })
            .inc();
    }
    for line in &escape_lines {
        let _ = writeln!(stdout, "{line}");
    }
    if let Some(line) = ksm.and_then(|k| k.tick(now, &host_sample, &obs.vms, dry_run)) {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
    drop(stdout);
    if !dry_run {
        registry.apply_after_devices(metrics, now).await;
        registry.apply(&decision.actions, metrics, now).await;
    }
    for alert in &decision.alerts {
        tracing::warn!(%alert, "memory alert");
    }
    registry.remember(&decision.actions);

    // Publish.
    metrics.host_available.set(host_sample.available.0 as i64);
    let targets: Vec<_> = obs
        .vms
        .iter()
        .map(|vm| controller.target_of(&vm.name))
        .collect();
    // A new guest is placed in RAM, not in host swap: what undriven guests hold counts
    // whole here, where the running guests' squeeze leaves host swap to take it.
    let placing = capacity
        - host_sample
            .unmanaged
            .saturating_sub(controller.kept_memory());
    let room = aerostat_core::planner::admission::room(&obs, &targets, placing);
    metrics
        .host_room
        .set(i64::try_from(room.0).unwrap_or(i64::MAX));
    metrics.host_total.set(host_sample.total.0 as i64);
    metrics
        .host_unmanaged
        .set(i64::try_from(host_sample.unmanaged.0).unwrap_or(i64::MAX));
    metrics.set_alerts(&decision.alerts, controller.unmet_need());
    // Whose swap-ins, from the last tick's readings to this one's.
    let swapping = swap_rates::verdicts(previous.as_mut(), &obs, &samples, |name| {
        registry.get(name).map(|c| c.adopted_at())
    });
    let mut vms = Vec::new();
    // `obs.vms` (and so `targets`) follows `samples`.
    for (s, &target) in samples.iter().zip(&targets) {
        metrics.set_vm(&s.sample.name, s.sample.actual, target, s.sample.configured);
        let conn = registry.get(&s.sample.name);
        let verdict = swapping
            .iter()
            .find(|(name, _)| *name == s.sample.name)
            .map(|(_, v)| v);
        metrics.set_swapping(&s.sample.name, verdict);
        vms.push(VmStatus {
            name: s.sample.name.clone(),
            socket: s.socket.clone(),
            configured: s.sample.configured.0,
            actual: s.sample.actual.0,
            target: target.map(|t| t.0),
            floor: s.sample.floor().0,
            responsive: s.responsive,
            migrating: obs
                .vms
                .iter()
                .any(|v| v.name == s.sample.name && v.migrating),
            migratable: s.sample.migratable,
            migration_blockers: conn.map(|c| c.blockers.clone()).unwrap_or_default(),
            last_rule: conn.and_then(|c| c.last_rule.clone()),
            last_reason: conn.and_then(|c| c.last_reason.clone()),
            last_error: conn.and_then(|c| c.last_error.clone()),
            errors: conn.map_or(0, |c| c.errors),
            stats: s.sample.stats.clone(),
            coldness: s.sample.coldness,
            virtio_mem: conn.and_then(|c| c.virtio_mem_status()),
            swapping: verdict.cloned(),
        });
    }
    metrics.forget_vms_except(&vms.iter().map(|v| v.name.clone()).collect::<Vec<_>>());
    let mut st = status.write().unwrap_or_else(|p| p.into_inner());
    st.ticks = ticks;
    st.time = now.0;
    st.capacity = capacity.0;
    st.host = Some(host_sample);
    st.vms = vms;
    st.unadopted = unadopted;
    st.alerts = decision.alerts;
    st.room = Some(room.0);
    drop(st);
    *admission.write().unwrap_or_else(|p| p.into_inner()) = Some(admission::AdmissionInputs {
        obs: obs.clone(),
        targets,
        capacity: placing,
        taken: std::time::Instant::now(),
    });
    *previous = Some(swap_rates::next_previous(obs, &samples));
    Ok(())
}

/// One VM's input to a tick.
#[derive(Debug, Clone)]
pub struct ObservedVm {
    pub sample: VmSample,
    pub socket: String,
    pub responsive: bool,
}

/// Names of VMs from sockets: the file stem.
/// Warns about `[vm.NAME]` tables that name no VM behind `qmp_glob` now: a misspelt name
/// would leave that VM on `[vm_defaults]` (its floor too) without a word. Not an error: the
/// VM may simply not be running yet.
fn warn_unmatched_vm_tables(config: &Config) {
    let running: std::collections::BTreeSet<String> = match glob::glob(&config.qmp_glob) {
        Ok(paths) => paths
            .filter_map(Result::ok)
            .filter_map(|p| vm_name(&p))
            .collect(),
        Err(_) => return, // the loop reports a bad glob every tick
    };
    let seen: Vec<&str> = running.iter().map(String::as_str).collect();
    for name in config.vms.keys().filter(|n| !running.contains(*n)) {
        tracing::warn!(
            vm = %name,
            sockets = %seen.join(", "),
            "[vm.{name}] matches no QMP socket under qmp_glob yet; a VM of another name gets [vm_defaults]"
        );
    }
}

pub fn vm_name(path: &std::path::Path) -> Option<String> {
    // Control characters are written escaped: the name goes into logs, decision lines and
    // `aerostat status`'s table, where a socket named with a newline or an ANSI escape
    // forged log lines and cleared the terminal (session 34).
    let stem = path.file_stem()?.to_str()?;
    Some(
        stem.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}
