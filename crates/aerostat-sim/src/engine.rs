//! The simulation loop: virtual time, the same [`Controller`] the daemon runs.
//!
//! Every tick: VMs whose start time has come join; on policy ticks the host and guests
//! are *observed* (host counters, balloon `actual`, guest stats — never the hidden
//! truth), the controller decides and the actions become balloon targets; then every
//! guest and the host advance by one tick and the metrics integrate.
//!
//! One host runs on one thread, in VM order, so a scenario and seed give identical
//! numbers on every machine; fleets run hosts in parallel (see [`crate::fleet`]).

use aerostat_core::{
    Action, Bytes, Coldness, Controller, Millis, Observation, PolicyKind, PolicySettings, VmSample,
};

use crate::guest::Guest;
use crate::host::{Host, gib};
use crate::metrics::{HostRow, Summary, TimeSeries, VmRow, VmSummary};
use crate::migration::{Escape, MigrationRecord, Outcome};
use crate::scenario::Scenario;
use crate::workload::ShapeMemo;

/// How often the host measures each guest's idle memory (docs/observation.md, "Coldness").
pub const COLDNESS_WINDOW: Millis = Millis(30_000);

/// How a run is set up beyond the scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub policy: PolicyKind,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Overrides the policy interval (default: the scenario's, else the policy's own).
    pub interval: Option<Millis>,
    /// Samples kept for plots (0: none).
    pub samples: usize,
    /// A sample every this long instead (whole ticks, at least one): a close look at a
    /// stretch of a run.
    pub sample_every: Option<Millis>,
    /// Keep every action for the decision log (bounded by [`MAX_LOGGED_ACTIONS`]).
    pub log_actions: bool,
    /// Run the scenario's live-migration escape when its `[migration]` table turns it on
    /// (default true; false: the same host without it, for comparisons).
    pub escape: bool,
}

impl RunOptions {
    pub fn new(policy: PolicyKind) -> RunOptions {
        RunOptions {
            policy,
            seed: None,
            interval: None,
            samples: 1000,
            sample_every: None,
            log_actions: false,
            escape: true,
        }
    }
}

/// The decision log keeps at most this many actions: a long run must not fill memory.
pub const MAX_LOGGED_ACTIONS: usize = 1_000_000;

/// What a run produced.
#[derive(Debug)]
pub struct RunResult {
    pub summary: Summary,
    pub series: TimeSeries,
    /// (time, action), when `log_actions` was set.
    pub actions: Vec<(Millis, Action)>,
    /// Every migration the escape started, in start order.
    pub migrations: Vec<MigrationRecord>,
}

/// One host and its guests under one policy.
#[derive(Debug)]
pub struct Simulation {
    scenario: Scenario,
    options: RunOptions,
    controller: Controller,
    host: Host,
    guests: Vec<Guest>,
    alive: Vec<bool>,
    lost: Vec<bool>,
    /// Left the host by live migration.
    migrated: Vec<bool>,
    /// The host's migration escape, when the scenario turns it on.
    escape: Option<Escape>,
    obs: Observation,
    /// Guest index of each entry in `obs.vms`.
    obs_index: Vec<usize>,
    /// Guests no controller drives (`managed = false`).
    unmanaged: Vec<usize>,
    membership_changed: bool,
    interval_ticks: u64,
    tick: u64,
    ticks: u64,
    stalls: Vec<f64>,
    // Accumulators.
    vm: Vec<VmAcc>,
    window_stall: Vec<f64>,
    summary: Summary,
    series: TimeSeries,
    sample_every: u64,
    actions_log: Vec<(Millis, Action)>,
}

#[derive(Clone, Debug, Default)]
struct VmAcc {
    reclaimed: f64,
    oracle: f64,
    stall: f64,
    swap_in: f64,
    actions: u64,
    seconds: f64,
    migrated_at: Option<f64>,
    tlb_flushed: f64,
}

impl Simulation {
    pub fn new(scenario: Scenario, options: RunOptions) -> Simulation {
        let seed = options.seed.unwrap_or(scenario.seed);
        let asked = options
            .interval
            .or(scenario.interval)
            .unwrap_or_else(|| options.policy.native_interval());
        // The engine decides on whole ticks: the policy is told the cadence it really gets
        // (a 1 s native interval on a 60 s tick is a 60 s interval, and the policy sizes its
        // burst room from it).
        let interval_ticks = (asked.0 / scenario.tick.0).max(1);
        let interval = Millis(interval_ticks * scenario.tick.0);
        let settings = PolicySettings {
            reserve: scenario.host.reserve,
            interval,
            ..PolicySettings::default()
        };
        let controller = Controller::new(options.policy.build(&settings));
        let guests: Vec<Guest> = scenario
            .vms
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Guest::new(
                    spec.clone(),
                    seed,
                    i as u64,
                    scenario.host.free_page_reporting,
                )
            })
            .collect();
        let n = guests.len();
        let ticks = scenario.duration.0 / scenario.tick.0;
        let sample_every = if let Some(every) = options.sample_every {
            (every.0 / scenario.tick.0).max(1)
        } else if options.samples == 0 {
            u64::MAX
        } else {
            (ticks / options.samples as u64).max(1)
        };
        let series = TimeSeries {
            policy: options.policy.as_str().to_string(),
            vm_names: scenario.vms.iter().map(|v| v.name.clone()).collect(),
            configured: scenario.vms.iter().map(|v| v.memory.as_f64()).collect(),
            reserve: scenario.host.reserve.as_f64(),
            host_memory: scenario.host.memory.as_f64(),
            ..TimeSeries::default()
        };
        let has_migration = scenario.migration.is_some();
        let summary = Summary {
            scenario: scenario.name.clone(),
            policy: options.policy.as_str().to_string(),
            seed,
            duration_s: scenario.duration.as_secs_f64(),
            vms: n,
            migrations: has_migration.then_some(0),
            migration_downtime_seconds: has_migration.then_some(0.0),
            migrated_gib: has_migration.then_some(0.0),
            ..Summary::default()
        };
        let escape = scenario
            .migration
            .as_ref()
            .filter(|m| m.escape && options.escape)
            .map(|m| Escape::new(m.clone(), seed));
        Simulation {
            host: Host::new(scenario.host.clone()),
            obs: Observation {
                time: Millis::ZERO,
                host: Default::default(),
                vms: Vec::new(),
            },
            obs_index: Vec::new(),
            unmanaged: (0..n).filter(|&i| !scenario.vms[i].managed).collect(),
            membership_changed: true,
            alive: vec![false; n],
            lost: vec![false; n],
            migrated: vec![false; n],
            escape,
            stalls: vec![0.0; n],
            vm: vec![VmAcc::default(); n],
            window_stall: vec![0.0; n],
            guests,
            controller,
            interval_ticks,
            tick: 0,
            ticks,
            summary,
            series,
            sample_every,
            actions_log: Vec::new(),
            scenario,
            options,
        }
    }

    pub fn total_ticks(&self) -> u64 {
        self.ticks
    }

    pub fn done(&self) -> bool {
        self.tick >= self.ticks
    }

    /// VM-ticks simulated so far (a VM-tick is one VM advanced by one tick).
    pub fn vm_ticks(&self) -> u64 {
        self.tick * self.guests.len() as u64
    }

    /// What the policy was given at the last control tick.
    pub fn observation(&self) -> &Observation {
        &self.obs
    }

    /// Virtual time now.
    pub fn time(&self) -> Millis {
        self.now()
    }

    fn guest_index(&self, vm: &str) -> Option<usize> {
        self.guests.iter().position(|g| g.spec.name == vm)
    }

    /// A VM's balloon `actual` (guest memory now).
    pub fn actual_of(&self, vm: &str) -> Option<Bytes> {
        self.guest_index(vm)
            .map(|i| Bytes::from_f64(self.guests[i].actual))
    }

    /// Hot anonymous memory resident in a VM (hidden truth: for tests, never the policy).
    pub fn hot_anon_of(&self, vm: &str) -> Option<Bytes> {
        self.guest_index(vm)
            .map(|i| Bytes::from_f64(self.guests[i].hot_anon_resident()))
    }

    /// Drives a VM's working set from outside, like a test starting a workload in a real guest.
    pub fn set_working_set(&mut self, vm: &str, ws: Option<Bytes>) -> bool {
        let Some(i) = self.guest_index(vm) else {
            return false;
        };
        self.guests[i].override_working_set(ws);
        true
    }

    /// The guest migrating now, by name.
    pub fn migrating(&self) -> Option<&str> {
        let i = self.escape.as_ref()?.migrating()?;
        Some(&self.guests[i].spec.name)
    }

    /// Whether a VM has left the host by live migration.
    pub fn migrated(&self, vm: &str) -> bool {
        self.guest_index(vm).is_some_and(|i| self.migrated[i])
    }

    /// Host memory in use now (system, overheads, guest-resident memory).
    pub fn host_used(&self) -> Bytes {
        Bytes::from_f64(self.host.used)
    }

    /// Guest memory KSM has merged away now (what the host's `pages_sharing` says).
    pub fn ksm_saved(&self) -> Bytes {
        Bytes::from_f64(self.host.ksm_saved)
    }

    /// ksmd under `host.ksm_control = "mom"`: whether MoM's rule runs it, and its
    /// `pages_to_scan`; `None` under `"always"`.
    pub fn ksmd(&self) -> Option<(bool, u64)> {
        self.host.ksmd_state()
    }

    /// A VM's balloon target now.
    pub fn target_of(&self, vm: &str) -> Option<Bytes> {
        self.guest_index(vm)
            .map(|i| Bytes::from_f64(self.guests[i].target))
    }

    /// A VM's stall seconds so far (guest, host and migration stalls).
    pub fn stall_of(&self, vm: &str) -> Option<f64> {
        self.guest_index(vm).map(|i| self.vm[i].stall)
    }

    /// The migrations started so far.
    pub fn migrations(&self) -> &[MigrationRecord] {
        self.escape.as_ref().map_or(&[], |e| &e.records)
    }

    /// Guest plus host OOM kills so far.
    pub fn oom_kills(&self) -> u64 {
        self.summary.guest_oom_kills + self.summary.host_oom_kills
    }

    /// Actions so far (when `log_actions` was set).
    pub fn actions(&self) -> &[(Millis, Action)] {
        &self.actions_log
    }

    /// Runs up to `n` ticks.
    pub fn advance(&mut self, n: u64) {
        let end = (self.tick + n).min(self.ticks);
        while self.tick < end {
            self.step();
        }
    }

    /// Runs to the end and returns the result.
    pub fn run(mut self) -> RunResult {
        self.advance(u64::MAX);
        self.finish()
    }

    fn now(&self) -> Millis {
        Millis(self.tick * self.scenario.tick.0)
    }

    fn step(&mut self) {
        let now = self.now();
        let dt_s = self.scenario.tick.as_secs_f64();
        for (i, g) in self.guests.iter().enumerate() {
            let should = !self.lost[i] && !self.migrated[i] && now >= g.spec.start;
            if should != self.alive[i] {
                self.alive[i] = should;
                self.membership_changed = true;
            }
        }
        if self.tick.is_multiple_of(self.interval_ticks) {
            self.control(now);
        }
        self.stalls.iter_mut().for_each(|s| *s = 0.0);
        let mut shape = ShapeMemo::default();
        for (i, g) in self.guests.iter_mut().enumerate() {
            if !self.alive[i] {
                continue;
            }
            let fx = g.step(now.saturating_sub(g.spec.start), now, dt_s, &mut shape);
            self.stalls[i] = fx.stall_s;
            self.vm[i].swap_in += fx.swap_in;
            if let Some(tlb) = &self.scenario.tlb {
                self.vm[i].tlb_flushed += tlb.flushed(fx.taken, g.true_working_set());
            }
            if fx.oom_killed {
                self.summary.guest_oom_kills += 1;
            }
        }
        let hfx = self
            .host
            .step(&mut self.guests, &self.alive, &mut self.stalls, dt_s);
        if let Some(k) = hfx.killed {
            self.lost[k] = true;
            self.alive[k] = false;
            self.membership_changed = true;
            self.summary.host_oom_kills += 1;
            if let Some(e) = self.escape.as_mut() {
                e.lost(k);
            }
        }
        let efx = match self.escape.as_mut() {
            Some(e) => e.tick(now, dt_s, &mut self.stalls),
            None => Default::default(),
        };
        // Integrate the metrics.
        let reserve = self.scenario.host.reserve.as_f64();
        let host_free = self.scenario.host.memory.as_f64() - self.host.used;
        if host_free < reserve {
            self.summary.seconds_below_reserve += dt_s;
        }
        self.summary.peak_host_used_gib = self.summary.peak_host_used_gib.max(gib(self.host.used));
        for (i, g) in self.guests.iter().enumerate() {
            if !self.alive[i] {
                continue;
            }
            let acc = &mut self.vm[i];
            let stall = self.stalls[i].min(dt_s);
            if g.spec.resizable() {
                acc.reclaimed += (g.configured() - g.actual) * dt_s;
            }
            // No policy can take a virtio-mem guest without a balloon below its boot memory,
            // nor anything from a guest no controller drives.
            let reachable = if g.spec.managed {
                g.configured() - g.spec.device_floor().as_f64()
            } else {
                0.0
            };
            acc.oracle += g.oracle_reclaimable().min(reachable) * dt_s;
            acc.stall += stall;
            acc.seconds += dt_s;
            self.window_stall[i] += stall;
        }
        // The pause of a migration is a stall of that guest, beyond the tick's cap.
        if let Some((i, downtime)) = efx.downtime {
            self.vm[i].stall += downtime;
            self.window_stall[i] += downtime;
            *self.summary.migration_downtime_seconds.get_or_insert(0.0) += downtime;
        }
        // A completed migration frees the guest's memory here: its metrics stop.
        if let Some(i) = efx.departed {
            self.migrated[i] = true;
            self.alive[i] = false;
            self.membership_changed = true;
            self.vm[i].migrated_at = Some(now.as_secs_f64() + dt_s);
            self.host.refresh(&self.guests, &self.alive);
        }
        self.tick += 1;
        if self.tick.is_multiple_of(self.sample_every) {
            self.sample(now);
        }
    }

    /// Observe, decide, act.
    fn control(&mut self, now: Millis) {
        if self.membership_changed {
            self.obs.vms.clear();
            self.obs_index.clear();
            for (i, g) in self.guests.iter().enumerate() {
                if !self.alive[i] || !g.spec.managed {
                    continue;
                }
                let s = &g.spec;
                let mut vm = VmSample::new(s.name.clone(), s.memory, s.memory);
                // A virtio-mem guest without a balloon keeps its boot memory.
                vm.min = s.floor();
                vm.balloon = s.resizable();
                vm.overhead = self.scenario.host.vm_overhead;
                vm.pinned = s.pinned;
                vm.migratable = s.migratable;
                vm.priority = s.priority;
                vm.shares = s.shares;
                vm.class = s.class;
                vm.headroom = s.headroom;
                // The scenario's guest swap is what the operator knows of the guest's image.
                vm.guest_swap = (s.swap > Bytes::ZERO).then_some(s.swap);
                // The operator configured the device: not hidden from a real controller.
                vm.deflate_on_oom = Some(s.deflate_on_oom);
                vm.blocks = s.virtio_mem.map(|d| d.blocks(s.balloon));
                self.obs.vms.push(vm);
                self.obs_index.push(i);
            }
            self.membership_changed = false;
        }
        self.obs.time = now;
        self.obs.host = self.host.sample();
        // What the QEMUs of guests no controller drives hold (their RSS): all the policy
        // knows of them, as the daemon knows an unadopted socket's QEMU.
        self.obs.host.unmanaged = self
            .unmanaged
            .iter()
            .filter(|&&i| self.alive[i])
            // In RAM: what the host swapped of it is already out of swap free.
            .map(|&i| {
                Bytes::from_f64(Host::guest_backed(&self.guests[i]))
                    + self.scenario.host.vm_overhead
            })
            .sum();
        // The host measures coldness once a window (clearing accessed bits every tick
        // would blind the host's own LRU): a sample stays until the next window closes.
        let window_closed = now.0.is_multiple_of(COLDNESS_WINDOW.0);
        for (vm, &i) in self.obs.vms.iter_mut().zip(&self.obs_index) {
            let g = &self.guests[i];
            if window_closed {
                vm.coldness = Some(Coldness {
                    touched: Bytes::from_f64(g.touched),
                    idle: Bytes::from_f64(g.idle()),
                    at: now,
                });
            }
            vm.actual = Bytes::from_f64(g.reported_actual());
            vm.rss = Some(Bytes::from_f64(g.touched) + self.scenario.host.vm_overhead);
            // QEMU's `VmSwap`: a host-side fact a real controller reads too.
            vm.host_swapped = Some(Bytes::from_f64(g.host_swapped_cold + g.host_swapped_hot));
            // QEMU's reads from the guest's swap disk and its writes to it: every swap-in and
            // swap-out, as it happens.
            if g.spec.swap_disk {
                vm.swap_disk_read = Some(Bytes::from_f64(g.swap_in_total()));
                vm.swap_disk_written = Some(Bytes::from_f64(g.swap_out_total()));
            }
            // A guest polled every `stats_interval` reports the stats of its last poll
            // next to the live `actual`, as QEMU does.
            let due = match (g.spec.stats_interval, vm.stats.last_update) {
                (Some(every), Some(at)) => now.saturating_sub(at) >= every,
                _ => true,
            };
            if due {
                g.write_stats(now, &mut vm.stats);
            }
        }
        if let Some(e) = self.escape.as_mut() {
            // Less what balloons keep that the host still holds, as of the last tick.
            let capacity =
                self.obs.host.capacity(self.scenario.host.reserve) - self.controller.kept_memory();
            // The policy's unmet need and the guests' growth, as of the last tick.
            e.control(
                now,
                &mut self.obs,
                &self.obs_index,
                &self.guests,
                capacity,
                &self.controller,
            );
        }
        let decision = self.controller.tick(&self.obs);
        for action in decision.actions {
            let Some(target) = action.balloon_target() else {
                continue;
            };
            let Ok(k) = self
                .obs
                .vms
                .binary_search_by(|v| v.name.as_str().cmp(&action.vm))
            else {
                continue;
            };
            let i = self.obs_index[k];
            let spec = &self.guests[i].spec;
            // As the daemon does: the device carries what lies above boot memory, in blocks.
            let target = match spec.virtio_mem {
                Some(v) => v.carried_out(target, spec.memory, spec.balloon),
                None => target,
            };
            self.guests[i].target = target.as_f64();
            self.vm[i].actions += 1;
            self.summary.actions += 1;
            if self.options.log_actions && self.actions_log.len() < MAX_LOGGED_ACTIONS {
                self.actions_log.push((now, action));
            }
        }
    }

    fn sample(&mut self, now: Millis) {
        let mut guests_mem = 0.0;
        let mut reclaimed = 0.0;
        let mut oracle = 0.0;
        let mut stall = 0.0;
        for (i, g) in self.guests.iter().enumerate() {
            let alive = self.alive[i];
            if alive {
                guests_mem += g.touched - g.host_swapped_cold - g.host_swapped_hot;
                reclaimed += g.configured() - g.actual;
                // As the summary counts it: nothing of a guest no controller drives.
                if g.spec.managed {
                    oracle += g.oracle_reclaimable();
                }
            }
            stall += self.window_stall[i];
            self.series.vm_rows.push(VmRow {
                actual: if alive { g.actual } else { 0.0 },
                target: if alive { g.target } else { 0.0 },
                true_ws: if alive { g.true_working_set() } else { 0.0 },
                stall_s: self.window_stall[i],
            });
            self.window_stall[i] = 0.0;
        }
        self.series.rows.push(HostRow {
            t_s: now.as_secs_f64(),
            used: self.host.used,
            guests: guests_mem,
            free: (self.scenario.host.memory.as_f64() - self.host.used).max(0.0),
            swap_used: self.host.swap_used,
            reclaimed,
            oracle,
            stall_s: stall,
        });
    }

    pub fn finish(mut self) -> RunResult {
        let s = &mut self.summary;
        const H: f64 = 3600.0;
        let mut vm_seconds = 0.0;
        for (i, acc) in self.vm.iter().enumerate() {
            s.reclaimed_gib_hours += gib(acc.reclaimed) / H;
            s.oracle_reclaimable_gib_hours += gib(acc.oracle) / H;
            s.guest_stall_seconds += acc.stall;
            s.guest_swap_in_gib += gib(acc.swap_in);
            vm_seconds += acc.seconds;
            let g = &self.guests[i];
            s.per_vm.push(VmSummary {
                name: g.spec.name.clone(),
                reclaimed_gib_hours: gib(acc.reclaimed) / H,
                oracle_reclaimable_gib_hours: gib(acc.oracle) / H,
                stall_seconds: acc.stall,
                swap_in_gib: gib(acc.swap_in),
                oom_kills: g.oom_kills,
                actions: acc.actions,
                lost: self.lost[i],
                migrated_at: acc.migrated_at,
                tlb_entries_flushed: self.scenario.tlb.map(|_| acc.tlb_flushed),
            });
        }
        if let Some(tlb) = &self.scenario.tlb {
            let flushed = self.vm.iter().fold(0.0, |sum, acc| sum + acc.tlb_flushed);
            s.tlb_entries_flushed = Some(flushed);
            s.tlb_refill_seconds = Some(flushed * tlb.refill_s);
        }
        s.vm_hours = vm_seconds / H;
        s.oracle_ratio = if s.oracle_reclaimable_gib_hours > 0.0 {
            s.reclaimed_gib_hours / s.oracle_reclaimable_gib_hours
        } else {
            0.0
        };
        s.stall_percent = if vm_seconds > 0.0 {
            100.0 * s.guest_stall_seconds / vm_seconds
        } else {
            0.0
        };
        s.host_swap_out_gib = gib(self.host.swap_out_total);
        s.host_swap_in_gib = gib(self.host.swap_in_total);
        let migrations = self.escape.map(|e| e.records).unwrap_or_default();
        if s.migrations.is_some() {
            s.migrations = Some(
                migrations
                    .iter()
                    .filter(|m| m.outcome == Outcome::Completed)
                    .count() as u64,
            );
            // A fold from +0.0: an empty f64 `sum()` is −0.0, which JSON would show.
            let sent = migrations
                .iter()
                .fold(0.0, |acc, m| acc + m.bytes_sent as f64);
            s.migrated_gib = Some(gib(sent));
        }
        self.series.events = migrations
            .iter()
            .map(|m| (m.started_s, m.ended_s, m.vm.clone()))
            .collect();
        RunResult {
            summary: self.summary.rounded(),
            series: self.series,
            actions: self.actions_log,
            migrations,
        }
    }
}

/// Runs a scenario with a policy, start to end.
pub fn run(scenario: &Scenario, options: RunOptions) -> RunResult {
    Simulation::new(scenario.clone(), options).run()
}
