//! The memory-pressure escape in the daemon: when the host cannot hold its guests (floors that
//! do not fit, or — if configured — a host swapping guest memory back in) for `grace`, move
//! one guest to a peer with the same orchestrator as `aerostat migrate`.
//!
//! The choice is the core's ([`choose_escape`]); this file only gathers its inputs (the
//! observation, dirty rates measured with `calc-dirty-rate` while the grace period runs),
//! prepares the destination (the optional `prepare` hook), runs one migration at a time in
//! the background while the control loop goes on (the moving guest is marked `migrating`, so
//! the controller leaves its balloon alone), and reports each step as a JSON line on stdout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aerostat_core::planner::escape::{
    EscapeSettings, EscapeTimer, Pressure, PressureWatch, choose_escape,
};
use aerostat_core::{Bytes, Millis, Observation};
use aerostat_qemu::QemuVm;
use aerostat_qemu::backend::{DirtyRateStatus, MigrationStatus};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::config::{Config, EscapeConfig};
use super::vms::VmRegistry;
use crate::cmd::migrate::{
    Destination, Handoff, HandoffReport, Report, Settings, StillBlocked, migrate_vm,
};

/// On shutdown, how long a cancelled escape may take to end before the devices it unplugged
/// are left out.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// `calc-dirty-rate` window for the candidates, seconds.
const DIRTY_PROBE_SECS: u32 = 1;
/// The `prepare` hook must have answered by then.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
/// A guest whose escape failed is not chosen again for this many grace periods (the next one
/// in the ranking is), so one guest that cannot move does not block the rest.
const FAILED_BACKOFF_GRACES: u64 = 10;

/// One escape under way.
struct Running {
    vm: String,
    peer: String,
    handle: JoinHandle<anyhow::Result<Report>>,
    /// The devices to unplug that the guest had when the escape began: a shutdown that
    /// aborts the escape plugs back those that are gone.
    had_devices: Vec<String>,
}

/// The escape's state across ticks.
pub struct EscapeRunner {
    config: EscapeConfig,
    watch: PressureWatch,
    timer: EscapeTimer,
    /// Dirty-rate probes were started for the current episode of pressure.
    probing: bool,
    running: Option<Running>,
    /// Index of the peer the next escape goes to (advanced after a failure).
    next_peer: usize,
    /// Guests whose migration completed: they run elsewhere now. Their source QEMU normally
    /// quits and disappears from discovery; if it did not, it must not count or move again.
    departed: BTreeSet<String>,
    /// Guests whose escape failed, and when.
    failed_at: BTreeMap<String, Millis>,
    /// Devices to unplug around each guest's migration: by VM name, else `[vm_defaults]`'s.
    handoffs: BTreeMap<String, Handoff>,
    default_handoff: Handoff,
    /// Guests whose handoff left QEMU still blocking, with the blockers it listed then: they
    /// stay unmovable while QEMU lists the same (unplugging their devices again would only
    /// cut them off again for nothing).
    still_blocked: BTreeMap<String, Vec<String>>,
}

impl EscapeRunner {
    pub fn new(config: EscapeConfig, vms: &Config) -> EscapeRunner {
        EscapeRunner {
            handoffs: vms
                .vms
                .iter()
                .map(|(name, s)| (name.clone(), s.handoff.clone()))
                .collect(),
            default_handoff: vms.defaults.handoff.clone(),
            still_blocked: BTreeMap::new(),
            config,
            watch: PressureWatch::default(),
            timer: EscapeTimer::default(),
            probing: false,
            running: None,
            next_peer: 0,
            departed: BTreeSet::new(),
            failed_at: BTreeMap::new(),
        }
    }

    fn handoff_of(&self, vm: &str) -> &Handoff {
        self.handoffs.get(vm).unwrap_or(&self.default_handoff)
    }

    /// The guest is on its way out (or gone): the controller must leave its balloon alone,
    /// and its floor no longer counts against this host.
    pub fn is_leaving(&self, vm: &str) -> bool {
        self.running.as_ref().is_some_and(|r| r.vm == vm) || self.departed.contains(vm)
    }

    /// One tick. Returns the lines to print (escape chosen, escape finished). `unmet`: the
    /// policy's unmet need this tick (`Controller::unmet_need`); `growth[i]`: how fast
    /// `obs.vms[i]`'s working set grows, per second (`Controller::growth_of`).
    pub async fn tick(
        &mut self,
        obs: &Observation,
        capacity: Bytes,
        unmet: Option<Bytes>,
        growth: &[Bytes],
        registry: &VmRegistry,
        dry_run: bool,
    ) -> Vec<Value> {
        let mut lines = Vec::new();
        // A departed guest's source is normally gone by now; a new guest may reuse the name.
        self.departed
            .retain(|name| obs.vms.iter().any(|v| &v.name == name));
        if let Some(done) = self.finished(obs.time, registry).await {
            lines.push(done);
        }
        let pressure = self
            .watch
            .observe(obs, capacity, self.config.thrash_limit, unmet);
        if self.running.is_some() {
            return lines;
        }
        match (&pressure, self.probing) {
            (Some(_), false) => {
                self.probing = true;
                start_dirty_probes(obs, registry);
            }
            (None, _) => self.probing = false,
            _ => {}
        }
        if !self
            .timer
            .observe(obs.time, pressure.is_some(), self.config.grace)
        {
            return lines;
        }
        // The pressure has lasted `grace`: choose, and (unless dry-run) go.
        self.timer.reset();
        self.probing = false;
        let rates = dirty_rates(obs, registry).await;
        let settings = EscapeSettings {
            bandwidth: self.config.bandwidth,
            downtime_limit: self.config.downtime,
            max_time: self.config.max_time,
            // Post-copy needs the destination's QMP, which only a `prepare` hook can give.
            postcopy: self.config.prepare.is_some(),
        };
        // A guest whose handoff left blockers standing stays while they are the same.
        self.still_blocked
            .retain(|vm, blockers| registry.get(vm).is_some_and(|c| c.blockers == *blockers));
        let held;
        let obs = if obs
            .vms
            .iter()
            .any(|v| self.still_blocked.contains_key(&v.name))
        {
            let mut o = obs.clone();
            for v in &mut o.vms {
                if self.still_blocked.contains_key(&v.name) {
                    v.migratable = false;
                }
            }
            held = o;
            &held
        } else {
            obs
        };
        let escape = choose_escape(
            obs,
            capacity,
            &rates,
            growth,
            &settings,
            pressure.as_ref().and_then(Pressure::unmet),
        );
        let backoff = Millis(self.config.grace.0.saturating_mul(FAILED_BACKOFF_GRACES));
        let now = obs.time;
        self.failed_at
            .retain(|_, at| now.saturating_sub(*at) < backoff);
        let skipped: Vec<&str> = escape
            .ranking
            .iter()
            .map(|c| c.name.as_str())
            .take_while(|n| self.failed_at.contains_key(*n))
            .collect();
        let peer = self
            .config
            .peers
            .get(self.next_peer % self.config.peers.len().max(1))
            .cloned()
            .unwrap_or_default();
        let chosen = escape
            .ranking
            .iter()
            .find(|c| !self.failed_at.contains_key(&c.name))
            .map(|c| c.name.clone());
        let pressure_text = pressure.map(|p| p.to_string()).unwrap_or_default();
        tracing::warn!(pressure = %pressure_text, chosen = ?chosen, dry_run, reason = %escape.reason, "memory-pressure escape");
        lines.push(json!({
            "time": obs.time.0,
            "event": "escape",
            "pressure": pressure_text,
            "guest": chosen,
            "peer": peer,
            "reason": escape.reason,
            "skipped_after_failure": skipped,
            "ranking": escape.ranking.iter().map(|c| json!({
                "guest": c.name,
                "relief": c.relief.0,
                "fits_after": c.fits_after,
                "fits_ahead": c.fits_ahead,
                "dirty_rate": c.dirty_rate.map(|d| d.0),
                "strategy": c.plan.chosen.map(|s| s.as_str()),
                "predicted_ms": c.predicted_time.0,
                "score": c.score,
            })).collect::<Vec<_>>(),
            "dry_run": dry_run,
        }));
        if dry_run {
            return lines;
        }
        let Some(vm) = chosen else {
            return lines;
        };
        let Some(qemu) = registry.qemu(&vm) else {
            return lines;
        };
        let socket = registry.get(&vm).map(|c| c.socket.clone());
        let memory = obs
            .vms
            .iter()
            .find(|v| v.name == vm)
            .map_or(Bytes::ZERO, |v| v.configured);
        let job = Job {
            vm: vm.clone(),
            socket,
            memory,
            peer: peer.clone(),
            prepare: self.config.prepare.clone(),
            settings: Settings {
                downtime: self.config.downtime,
                max_time: self.config.max_time,
                // The escape's budget is time: a host short of memory pays for traffic.
                max_bytes: None,
                bandwidth: self.config.bandwidth,
                forced: None,
                measure_secs: DIRTY_PROBE_SECS,
                quit_source: true,
                handoff: self.handoff_of(&vm).clone(),
            },
        };
        let mut had_devices = Vec::new();
        for id in &job.settings.handoff.unplug {
            if qemu.has_device(id).await.unwrap_or(false) {
                had_devices.push(id.clone());
            }
        }
        self.running = Some(Running {
            vm,
            peer,
            handle: tokio::spawn(job.run(qemu)),
            had_devices,
        });
        lines
    }

    /// On shutdown: a pre-copy under way is cancelled (the guest stays, as after any failed
    /// escape); a post-copy cannot be, and QEMU finishes it without us.
    pub async fn shutdown(&mut self, registry: &VmRegistry) {
        let Some(r) = self.running.take() else { return };
        r.handle.abort();
        let Some(qemu) = registry.qemu(&r.vm) else {
            return;
        };
        match qemu.query_migrate().await.map(|i| i.status) {
            Ok(
                MigrationStatus::Setup | MigrationStatus::Active | MigrationStatus::PreSwitchover,
            ) => match qemu.migrate_cancel().await {
                Ok(()) => {
                    tracing::warn!(vm = %r.vm, "shutting down: escape cancelled, the guest stays")
                }
                Err(e) => {
                    tracing::warn!(vm = %r.vm, error = %e, "shutting down: could not cancel the escape")
                }
            },
            Ok(status) => {
                tracing::warn!(vm = %r.vm, ?status, "shutting down during an escape; QEMU carries on")
            }
            Err(e) => tracing::warn!(vm = %r.vm, error = %e, "shutting down during an escape"),
        }
        // The aborted task may have unplugged devices: plug back those that are gone once
        // QEMU has finished cancelling (it refuses hot-plug while a migration runs; a
        // migration that goes on, a post-copy, keeps them out, and the report says so).
        let mut report = HandoffReport::default();
        for id in &r.had_devices {
            if !qemu.has_device(id).await.unwrap_or(true) {
                report.asked.push(id.clone());
                report.unplugged.push(id.clone());
            }
        }
        if report.asked.is_empty() {
            return;
        }
        self.handoff_of(&r.vm)
            .replug_after(&qemu, None, &mut report, SHUTDOWN_WAIT)
            .await;
        tracing::warn!(vm = %r.vm, on = ?report.replugged_on, replugged = ?report.replugged, errors = ?report.replug_errors, "shutting down during an escape: devices plugged back");
    }

    /// The line for an escape that has just finished.
    async fn finished(&mut self, now: Millis, registry: &VmRegistry) -> Option<Value> {
        if !self.running.as_ref()?.handle.is_finished() {
            return None;
        }
        let r = self.running.take()?;
        let result = match r.handle.await {
            Ok(result) => result,
            Err(join) => Err(anyhow::anyhow!("the migration task failed: {join}")),
        };
        self.timer.reset();
        // What QEMU says now, whatever the report says: a watch that gave up may have left a
        // migration that completed (or is still going) behind it.
        let source = match registry.qemu(&r.vm) {
            Some(q) => match q.query_migrate().await {
                Ok(i) => Some(i.status),
                Err(e) => {
                    // Then the task's report decides, and an operator should know why.
                    tracing::warn!(vm = %r.vm, error = %e, "query-migrate after the escape failed; going by the migration's own report");
                    None
                }
            },
            None => None,
        };
        let gone = match (&result, &source) {
            (Ok(report), _) if report.completed => true,
            (_, Some(MigrationStatus::Completed)) => {
                // Completed after all: the source is paused for good; free its memory.
                if let Some(q) = registry.qemu(&r.vm)
                    && let Err(e) = q.client().execute("quit", None).await
                {
                    tracing::warn!(vm = %r.vm, error = %e, "quit on the migrated source");
                }
                true
            }
            (_, Some(s)) if !s.is_finished() && *s != MigrationStatus::None => {
                tracing::warn!(vm = %r.vm, status = ?s, "escape still under way in QEMU; the guest counts as leaving");
                true
            }
            _ => false,
        };
        if gone {
            self.departed.insert(r.vm.clone());
        } else {
            self.next_peer += 1;
            self.failed_at.insert(r.vm.clone(), now);
        }
        let line = match result {
            Ok(report) => {
                tracing::warn!(vm = %r.vm, peer = %r.peer, outcome = %report.outcome, "escape finished");
                json!({
                    "event": "escape_finished",
                    "guest": r.vm,
                    "peer": r.peer,
                    "completed": report.completed,
                    "departed": gone,
                    "outcome": report.outcome,
                    "strategy": report.strategy.map(|s| s.as_str()),
                    "predicted_total_ms": report.predicted_total_ms,
                    "total_time_ms": report.total_time_ms,
                    "downtime_ms": report.downtime_ms,
                    "paused_ms": report.paused_ms,
                    "bytes_sent": report.bytes_sent,
                    "switches": report.switches.iter().map(|s| &s.reason).collect::<Vec<_>>(),
                    "devices": report.devices,
                    "error": report.error,
                })
            }
            Err(e) => {
                if let Some(still) = e.downcast_ref::<StillBlocked>()
                    && let Some(conn) = registry.get(&r.vm)
                {
                    tracing::warn!(vm = %r.vm, blockers = ?still.blockers, "the devices' handoff left QEMU blocking this guest: the escape leaves it while these blockers stand");
                    self.still_blocked
                        .insert(r.vm.clone(), conn.blockers.clone());
                }
                tracing::warn!(vm = %r.vm, peer = %r.peer, error = %format!("{e:#}"), "escape failed; the guest stays");
                json!({
                    "event": "escape_finished",
                    "guest": r.vm,
                    "peer": r.peer,
                    "completed": false,
                    "departed": gone,
                    "outcome": "not started",
                    "error": format!("{e:#}"),
                })
            }
        };
        Some(line)
    }
}

/// Starts `calc-dirty-rate` on every guest; QEMU measures in the background and
/// [`dirty_rates`] collects the results when the grace period is over.
fn start_dirty_probes(obs: &Observation, registry: &VmRegistry) {
    for vm in &obs.vms {
        if let Some(qemu) = registry.qemu(&vm.name) {
            tokio::spawn(async move {
                if let Err(e) = qemu.calc_dirty_rate(DIRTY_PROBE_SECS).await {
                    tracing::debug!(error = %e, "calc-dirty-rate");
                }
            });
        }
    }
}

async fn dirty_rates(obs: &Observation, registry: &VmRegistry) -> Vec<Option<Bytes>> {
    let mut out = Vec::with_capacity(obs.vms.len());
    for vm in &obs.vms {
        let rate = match registry.qemu(&vm.name) {
            Some(q) => match q.query_dirty_rate().await {
                Ok(info) if info.status == DirtyRateStatus::Measured => {
                    info.dirty_rate_mib_per_sec.map(Bytes::mib)
                }
                _ => None,
            },
            None => None,
        };
        out.push(rate);
    }
    out
}

/// One escape's work, off the control loop.
struct Job {
    vm: String,
    socket: Option<PathBuf>,
    memory: Bytes,
    peer: String,
    prepare: Option<Vec<String>>,
    settings: Settings,
}

impl Job {
    async fn run(self, qemu: Arc<QemuVm>) -> anyhow::Result<Report> {
        let (uri, dest_qmp) = match &self.prepare {
            Some(argv) => self.prepare(argv).await?,
            None => (self.peer.clone(), None),
        };
        let dest = Destination::connect(dest_qmp.as_deref()).await;
        migrate_vm(&qemu, dest, &uri, &self.settings).await
    }

    /// Runs the `prepare` hook: environment `AEROSTAT_VM`, `AEROSTAT_VM_SOCKET`,
    /// `AEROSTAT_VM_MEMORY` (bytes) and `AEROSTAT_PEER`; it must exit 0 within
    /// [`PREPARE_TIMEOUT`]. Its stdout may say `uri=…` (where to migrate, instead of the peer)
    /// and `dest_qmp=…` (the destination's QMP socket, which makes post-copy possible).
    async fn prepare(&self, argv: &[String]) -> anyhow::Result<(String, Option<PathBuf>)> {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("AEROSTAT_VM", &self.vm)
            .env("AEROSTAT_VM_MEMORY", self.memory.0.to_string())
            .env("AEROSTAT_PEER", &self.peer)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(s) = &self.socket {
            cmd.env("AEROSTAT_VM_SOCKET", s);
        }
        let out = tokio::time::timeout(PREPARE_TIMEOUT, cmd.output())
            .await
            .map_err(|_| {
                anyhow::anyhow!("prepare hook {argv:?}: no answer in {PREPARE_TIMEOUT:?}")
            })?
            .map_err(|e| anyhow::anyhow!("prepare hook {argv:?}: {e}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "prepare hook {argv:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let answer = parse_prepare_output(&String::from_utf8_lossy(&out.stdout));
        let uri = answer
            .get("uri")
            .cloned()
            .unwrap_or_else(|| self.peer.clone());
        if uri.is_empty() {
            anyhow::bail!("prepare hook {argv:?} named no `uri=` and no peer is configured");
        }
        Ok((uri, answer.get("dest_qmp").map(PathBuf::from)))
    }
}

/// `key=value` lines (other lines are ignored, so a hook may log to stdout).
fn parse_prepare_output(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v))
        .filter(|(k, _)| matches!(*k, "uri" | "dest_qmp"))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_output_keeps_known_keys_only() {
        let a = parse_prepare_output(
            "starting qemu...\nuri=tcp:10.0.0.2:4444\ndest_qmp = /run/x.qmp\nnoise=1\n",
        );
        assert_eq!(a.get("uri").map(String::as_str), Some("tcp:10.0.0.2:4444"));
        assert_eq!(a.get("dest_qmp").map(String::as_str), Some("/run/x.qmp"));
        assert_eq!(a.len(), 2);
    }
}
