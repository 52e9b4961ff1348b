//! Stage two of reading a scenario: what spans several keys (working set above configured
//! memory, reserve above host memory, ...), each error naming the key path and the line.

use std::path::Path;

use aerostat_core::linux::Watermarks;
use aerostat_core::{Bytes, Millis};

use super::locate::line_of;
use super::{
    HostSpec, KsmControl, MAX_VMS, MigrationSpec, MinFree, RawMigration, RawScenario, RawVirtioMem,
    RawWorkload, Scenario, ScenarioError, VirtioMem, VmSpec, WorkloadKind, WorkloadSpec,
    default_kernel,
};

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
        let tlb_line = text.find("[tlb]").map_or(1, |o| line_of(text, o));
        let meta_line = text.find("[scenario]").map_or(1, |o| line_of(text, o));
        let h = &self.host;
        if self.scenario.duration == Millis::ZERO {
            return Err(invalid(
                meta_line,
                "scenario.duration".into(),
                "must be positive".into(),
            ));
        }
        // The name heads tables (`bench.md`) and names files and plots: no control
        // characters, no `|` (a bench.md table's cell separator), one line.
        if let Some(c) = self
            .scenario
            .name
            .chars()
            .find(|c| c.is_control() || *c == '|')
        {
            return Err(invalid(
                meta_line,
                "scenario.name".into(),
                format!(
                    "{:?} is not allowed in a name (it heads tables and plots)",
                    c
                ),
            ));
        }
        if self.scenario.name.chars().count() > 200 {
            return Err(invalid(
                meta_line,
                "scenario.name".into(),
                "is longer than 200 characters".into(),
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
            if v.swap_disk && v.swap.is_none_or(|s| s == Bytes::ZERO) {
                return Err(invalid(
                    line,
                    key("swap_disk"),
                    "the guest has no swap to read (set `swap`)".into(),
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
            // What the workload may use is memory − kernel − pinned: nothing, or less.
            if kernel + pinned >= v.memory {
                return Err(invalid(
                    line,
                    key("pinned"),
                    format!(
                        "{pinned} pinned plus the guest kernel {kernel} leave nothing of memory {} for the workload",
                        v.memory
                    ),
                ));
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
                    migratable: v.migratable.unwrap_or(true),
                    managed: v.managed.unwrap_or(true),
                    balloon_lies: v.balloon_lies,
                    stats: v.stats.unwrap_or_default(),
                    stats_interval: v.stats_interval,
                    swap_disk: v.swap_disk,
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
        let tlb = match &self.tlb {
            None => None,
            Some(t) => Some(
                t.validate()
                    .map_err(|(k, msg)| invalid(tlb_line, format!("tlb.{k}"), msg))?,
            ),
        };
        Ok(Scenario {
            migration,
            tlb,
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

/// `pinned` memory (huge pages, VFIO) is the guest's but not the workload's: the guest model
/// keeps `kernel + pinned` out of what the workload may use.
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
        points: points.into(),
        dirty_rate: w.dirty_rate.map(|r| r.0),
    })
}
