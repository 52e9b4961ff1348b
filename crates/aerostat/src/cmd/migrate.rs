//! `aerostat migrate VM --to URI`: a live migration that lands.
//!
//! Plans with `aerostat_core::planner::migration` (dirty rate measured with `calc-dirty-rate`),
//! starts pre-copy, re-plans from `query-migrate` every ~200 ms, and switches to post-copy when
//! pre-copy will not land within the budget — only after checking that the destination
//! answers, since a post-copy cannot be cancelled. Without post-copy, a pre-copy that has not
//! landed by `--max-time` is cancelled (the source keeps running) and the exit code is 1.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aerostat_core::planner::migration::{
    Allowed, LiveStats, MigrationInputs, Plan, Prediction, Step, Strategy, choose, predict_all,
    replan,
};
use aerostat_core::{Bytes, Millis};
use aerostat_qemu::backend::{MigrationCapability, MigrationParameters, MigrationStatus};
use aerostat_qemu::qmp::EventTimestamp;
use aerostat_qemu::{QemuVm, QmpError, QmpOptions, VmEvent};
use aerostat_sim::scenario::Rate;
use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::MigrateArgs;
use crate::cmd::InputError;

mod handoff;

pub use handoff::{Handoff, HandoffReport, StillBlocked};

const POLL: Duration = Duration::from_millis(200);

/// What happened, printed as text or JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub outcome: String,
    pub completed: bool,
    pub inputs: MigrationInputs,
    pub plan: Plan,
    /// The strategy the planner chose, or the one forced with `--strategy`.
    pub strategy: Option<Strategy>,
    pub predicted_total_ms: Option<u64>,
    pub predicted_downtime_ms: Option<u64>,
    /// QEMU's `total-time`, or the wall clock when QEMU reports 0 (seen on QEMU 7.2).
    pub total_time_ms: Option<u64>,
    pub wall_time_ms: u64,
    pub downtime_ms: Option<u64>,
    /// The guest's whole pause: the source's `STOP` event to the destination's `RESUME`
    /// (QEMU's event timestamps; the two hosts' clocks must agree — here they are one host).
    /// Needs `--dest-qmp`.
    pub paused_ms: Option<u64>,
    pub postcopy_blocktime_ms: Option<u64>,
    pub bytes_sent: Option<u64>,
    /// `dirty-sync-count` at the end.
    pub passes: Option<u64>,
    /// Highest auto-converge throttle seen, percent.
    pub max_cpu_throttle: Option<u64>,
    pub switches: Vec<Switch>,
    pub pass_log: Vec<PassLine>,
    pub notes: Vec<String>,
    pub error: Option<String>,
    pub destination_status: Option<String>,
    /// The devices unplugged before the migration and plugged back after it (`--unplug`,
    /// `--replug`); `None` when there were none.
    pub devices: Option<HandoffReport>,
}

#[derive(Debug, Serialize)]
pub struct Switch {
    pub at_ms: u64,
    pub action: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct PassLine {
    pub at_ms: u64,
    pub dirty_sync_count: u64,
    pub transferred: u64,
    pub remaining: u64,
    pub dirty_rate: u64,
    pub mbps: f64,
    pub step: Step,
    pub reason: String,
}

/// How one migration is run: `aerostat migrate`'s flags, or the daemon's `[migration]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub downtime: Millis,
    pub max_time: Millis,
    /// `--max-bytes`: the traffic budget (`MigrationInputs::max_bytes`).
    pub max_bytes: Option<Bytes>,
    pub bandwidth: Bytes,
    /// `--strategy`: instead of the planner's choice (a forced pre-copy never switches).
    pub forced: Option<Strategy>,
    /// `calc-dirty-rate` window, seconds (0: not measured).
    pub measure_secs: u32,
    /// `quit` the source once the migration has completed.
    pub quit_source: bool,
    /// Devices unplugged before the migration and plugged back after it.
    pub handoff: Handoff,
}

fn parse_settings(args: &MigrateArgs) -> Result<Settings, InputError> {
    let bad = |what: &str, e: String| InputError(format!("--{what}: {e}"));
    let downtime: Millis = args
        .downtime
        .parse()
        .map_err(|e: aerostat_core::UnitError| bad("downtime", e.to_string()))?;
    let max_time: Millis = args
        .max_time
        .parse()
        .map_err(|e: aerostat_core::UnitError| bad("max-time", e.to_string()))?;
    if let Some((key, why)) = aerostat_core::planner::migration::timing_problem(downtime, max_time)
    {
        return Err(bad(&key.replace('_', "-"), why));
    }
    let max_bytes = match &args.max_bytes {
        None => None,
        Some(v) => match v.parse::<Bytes>() {
            Ok(b) if b > Bytes::ZERO => Some(b),
            Ok(_) => return Err(bad("max-bytes", "must be more than 0".into())),
            Err(e) => return Err(bad("max-bytes", e.to_string())),
        },
    };
    let Rate(bandwidth) = args.bandwidth.parse().map_err(|e| bad("bandwidth", e))?;
    if bandwidth.0 == 0 {
        return Err(bad("bandwidth", "must be more than 0".into()));
    }
    let forced = match args.strategy.as_deref() {
        None => None,
        Some(s) => Some(
            Strategy::ALL
                .into_iter()
                .find(|k| k.as_str() == s)
                .ok_or_else(|| {
                    bad(
                        "strategy",
                        format!("`{s}`: use pre-copy, auto-converge, post-copy-after-first-pass or post-copy-at-once"),
                    )
                })?,
        ),
    };
    Ok(Settings {
        downtime,
        max_time,
        max_bytes,
        bandwidth,
        forced,
        measure_secs: args.measure_secs,
        quit_source: args.quit_source,
        handoff: parse_handoff(args)?,
    })
}

fn parse_handoff(args: &MigrateArgs) -> Result<Handoff, InputError> {
    let steps = args
        .replug
        .iter()
        .enumerate()
        .map(|(i, text)| {
            serde_json::from_str(text)
                .map_err(|e| InputError(format!("--replug #{}: not JSON: {e}", i + 1)))
        })
        .collect::<Result<Vec<Value>, _>>()?;
    Handoff::parse(&args.unplug, &steps, "--unplug", |i| {
        format!("--replug #{}", i + 1)
    })
    .map_err(InputError)
}

pub fn run(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let settings = parse_settings(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(migrate(args, &settings))?;
    if args.json {
        crate::say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if report.completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn connect(path: &Path) -> Result<QemuVm, QmpError> {
    QemuVm::connect_with(
        path,
        QmpOptions {
            handshake_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        },
    )
    .await
}

async fn guest_memory(vm: &QemuVm) -> anyhow::Result<Bytes> {
    let v = vm
        .client()
        .execute("query-memory-size-summary", None)
        .await?;
    let base = v.get("base-memory").and_then(Value::as_u64).unwrap_or(0);
    let plugged = v.get("plugged-memory").and_then(Value::as_u64).unwrap_or(0);
    if base == 0 {
        anyhow::bail!("query-memory-size-summary: no base-memory in {v}");
    }
    Ok(Bytes(base + plugged))
}

/// The known-unsafe combination (docs/migration.md): virtio-mem + a balloon with free page
/// reporting, migrated by post-copy. `Some(reason)` when post-copy must not be used.
async fn postcopy_hazard(vm: &QemuVm, notes: &mut Vec<String>) -> Option<String> {
    let mems = match vm.query_memory_devices().await {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "cannot list memory devices ({e}); post-copy not risked"
            ));
        }
    };
    if mems.is_empty() {
        return None;
    }
    let balloon = match vm.find_balloon_path().await {
        Ok(None) => return None,
        Ok(Some(p)) => p,
        Err(e) => {
            return Some(format!(
                "virtio-mem present and the balloon cannot be inspected ({e})"
            ));
        }
    };
    let fpr = vm
        .client()
        .execute(
            "qom-get",
            Some(json!({"path": balloon, "property": "free-page-reporting"})),
        )
        .await;
    match fpr {
        Ok(Value::Bool(false)) => None,
        Ok(_) | Err(_) => {
            // Try to turn it off; QEMU refuses for a realized device, which is the usual case.
            let off = vm
                .client()
                .execute(
                    "qom-set",
                    Some(
                        json!({"path": balloon, "property": "free-page-reporting", "value": false}),
                    ),
                )
                .await;
            match off {
                Ok(_) => {
                    notes.push(format!(
                        "turned free-page-reporting off on {balloon} (virtio-mem present)"
                    ));
                    None
                }
                Err(e) => Some(format!(
                    "virtio-mem + balloon free-page-reporting + post-copy corrupted guests in the \
                     lab (3 of 8 runs); free-page-reporting cannot be turned off at run time ({e})"
                )),
            }
        }
    }
}

async fn measure_dirty_rate(
    vm: &QemuVm,
    secs: u32,
    notes: &mut Vec<String>,
) -> Result<Bytes, QmpError> {
    if secs == 0 {
        notes.push("dirty rate not measured (--measure-secs 0): assumed 0".into());
        return Ok(Bytes::ZERO);
    }
    // A new measurement has a new start time; until QEMU's thread has started, the previous
    // result is still reported as `measured`.
    let before = vm.query_dirty_rate().await?.start_time_secs;
    vm.calc_dirty_rate(secs).await?;
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs) + 10);
    loop {
        tokio::time::sleep(POLL).await;
        let info = vm.query_dirty_rate().await?;
        if let (aerostat_qemu::backend::DirtyRateStatus::Measured, Some(r)) =
            (&info.status, info.dirty_rate_mib_per_sec)
            && info.start_time_secs != before
            && info.calc_time == Some(u64::from(secs))
        {
            return Ok(Bytes::mib(r));
        }
        if Instant::now() > deadline {
            notes.push("calc-dirty-rate did not finish: dirty rate assumed 0".into());
            return Ok(Bytes::ZERO);
        }
    }
}

/// The destination answers QMP and is waiting for the incoming migration.
async fn destination_healthy(dest: Option<&QemuVm>) -> Result<(), String> {
    let Some(dest) = dest else {
        return Err("no destination QMP socket (--dest-qmp)".into());
    };
    if dest.client().is_closed() {
        return Err("the destination's QMP connection is closed (destination gone?)".into());
    }
    match dest
        .client()
        .execute_with_timeout("query-status", None, Duration::from_secs(1))
        .await
    {
        Ok(v) => {
            let status = v.get("status").and_then(Value::as_str).unwrap_or("?");
            if matches!(status, "inmigrate" | "paused" | "prelaunch" | "postmigrate") {
                Ok(())
            } else {
                Err(format!(
                    "destination is `{status}`, not waiting for the migration"
                ))
            }
        }
        Err(e) => Err(format!("destination does not answer: {e}")),
    }
}

async fn migrate(args: &MigrateArgs, s: &Settings) -> anyhow::Result<Report> {
    // A file that is there but no socket would be reported as "connection refused".
    if let Ok(meta) = std::fs::metadata(&args.vm)
        && !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
    {
        return Err(InputError(format!(
            "{}: not a socket (QEMU serves QMP on one: -qmp unix:PATH,server=on,wait=off)",
            args.vm.display()
        ))
        .into());
    }
    let vm = connect(&args.vm)
        .await
        .with_context(|| format!("connecting to the source QMP {}", args.vm.display()))?;
    let dest = Destination::connect(args.dest_qmp.as_deref()).await;
    migrate_vm(&vm, dest, &args.to, s).await
}

/// The destination's QMP connection, when there is one; post-copy needs it.
pub struct Destination {
    qmp: Option<QemuVm>,
    /// Why there is none.
    note: Option<String>,
}

impl Destination {
    pub async fn connect(path: Option<&Path>) -> Destination {
        match path {
            None => Destination {
                qmp: None,
                note: Some("no destination QMP socket: post-copy not possible".into()),
            },
            Some(p) => match connect(p).await {
                Ok(d) => Destination {
                    qmp: Some(d),
                    note: None,
                },
                Err(e) => Destination {
                    qmp: None,
                    note: Some(format!(
                        "destination QMP {}: {e}: post-copy not possible",
                        p.display()
                    )),
                },
            },
        }
    }
}

/// Migrates the VM behind `vm` (a connection the caller may share: the daemon keeps observing
/// the VM through it) to `to`, as planned; see the module docs.
pub async fn migrate_vm(
    vm: &QemuVm,
    dest: Destination,
    to: &str,
    s: &Settings,
) -> anyhow::Result<Report> {
    let mut notes = Vec::new();
    let current = vm.query_migrate().await?;
    if matches!(
        current.status,
        MigrationStatus::Active
            | MigrationStatus::Setup
            | MigrationStatus::PostcopyActive
            | MigrationStatus::Device
    ) {
        anyhow::bail!("a migration is already running ({:?})", current.status);
    }

    // What may be done.
    let mut allowed = Allowed::ALL;
    if let Some(note) = dest.note {
        allowed.postcopy = false;
        notes.push(note);
    }
    let dest = dest.qmp;
    if allowed.postcopy
        && let Some(reason) = postcopy_hazard(vm, &mut notes).await
    {
        allowed.postcopy = false;
        notes.push(format!("post-copy refused: {reason}"));
    }
    if let (true, Some(d)) = (allowed.postcopy, &dest)
        && let Err(e) = d
            .migrate_set_capabilities(&[
                (MigrationCapability::PostcopyRam, true),
                (MigrationCapability::PostcopyBlocktime, true),
            ])
            .await
    {
        allowed.postcopy = false;
        notes.push(format!(
            "destination refused postcopy-ram ({e}): post-copy not possible"
        ));
    }

    // Plan.
    let memory = guest_memory(vm).await?;
    // The guest's free memory sharpens the zero-page estimate below; ask for statistics now
    // so that they have arrived by the time the dirty-rate probes are done.
    // Statistics from before now (QEMU keeps the guest's last report, possibly from boot) say
    // nothing about the memory the guest holds now.
    let fresh_after = epoch_ms().saturating_sub(1000);
    // The interval to put back afterwards, when this changes it.
    let mut restore_polling = None;
    if !vm
        .guest_stats()
        .await
        .is_ok_and(|st| st.last_update.is_some_and(|t| t.0 >= fresh_after))
        && let Ok(before) = vm.stats_polling_interval().await
        && before != 1
        && vm.enable_stats_polling(1).await.is_ok()
    {
        restore_polling = Some(before);
        notes.push(format!(
            "guest statistics polling set to 1 s for the zero-page estimate (was {before} s)"
        ));
    }
    let dirty_rate = measure_dirty_rate(vm, s.measure_secs, &mut notes).await?;
    let mut inputs = MigrationInputs::new(memory, dirty_rate, s.bandwidth, s.downtime, s.max_time);
    inputs.max_bytes = s.max_bytes;
    // Page sampling counts distinct pages changed over the window. If twice the window does
    // not find clearly more, the guest rewrites a bounded set: that is the working set.
    if s.measure_secs > 0 && dirty_rate.0 > 0 {
        let window = s.measure_secs.saturating_mul(2);
        let rate2 = measure_dirty_rate(vm, window, &mut notes).await?;
        let distinct1 = dirty_rate.as_f64() * f64::from(s.measure_secs);
        let distinct2 = rate2.as_f64() * f64::from(window);
        if distinct2 < 1.5 * distinct1 {
            let ws = Bytes::from_f64(distinct1.max(distinct2)).min(memory);
            notes.push(format!(
                "working set ≈ {ws}: {} changed in {} s, {} in {window} s",
                Bytes::from_f64(distinct1),
                s.measure_secs,
                Bytes::from_f64(distinct2)
            ));
            inputs.working_set = Some(ws);
        }
    }
    if let Some(nonzero) = estimate_nonzero(vm, memory, fresh_after, &mut notes).await {
        inputs.zero_fraction = Some(1.0 - nonzero.min(memory).as_f64() / memory.as_f64());
    }
    if let Some(before) = restore_polling
        && let Err(e) = vm.enable_stats_polling(before).await
    {
        notes.push(format!(
            "could not put guest statistics polling back to {before} s: {e}"
        ));
    }
    let plan = choose(&inputs, allowed);
    let strategy = match s.forced {
        Some(f) => {
            if f.is_postcopy() && !allowed.postcopy {
                anyhow::bail!(
                    "--strategy {f}: post-copy is not possible here ({})",
                    notes.join("; ")
                );
            }
            notes.push(format!(
                "strategy forced to {f} (planner chose {:?})",
                plan.chosen
            ));
            // A forced pre-copy variant never switches.
            if !f.is_postcopy() {
                allowed.postcopy = false;
            }
            Some(f)
        }
        None => plan.chosen,
    };
    let predicted = strategy.map(|st| predict_all(&inputs).into_iter().find(|p| p.strategy == st));
    let predicted: Option<Prediction> = predicted.flatten();

    // Devices QEMU would not migrate leave the guest now, as late as possible: it runs
    // without them from here until the replug.
    let devices = if s.handoff.is_empty() {
        None
    } else {
        if dest.is_none() {
            anyhow::bail!(
                "devices to unplug ({}) must be plugged back on the destination, and there is no \
                 destination QMP connection (--dest-qmp, or the prepare hook's dest_qmp=): not \
                 migrating",
                s.handoff.unplug.join(", ")
            );
        }
        match s.handoff.unplug(vm).await {
            Ok(r) => Some(r),
            Err((e, r)) => {
                return Err(e.context(format!("no migration started; {}", replug_summary(&r))));
            }
        }
    };
    let planned = Planned {
        inputs,
        plan,
        strategy,
        predicted,
        allowed,
        notes,
    };
    let result = run_planned(vm, dest.as_ref(), to, s, planned).await;
    let mut report = match devices {
        None => result?,
        Some(mut devices) => {
            s.handoff
                .replug_after(vm, dest.as_ref(), &mut devices, handoff::END_TIMEOUT)
                .await;
            match result {
                Ok(mut report) => {
                    report.devices = Some(devices);
                    report
                }
                Err(e) => anyhow::bail!("{e:#}; {}", replug_summary(&devices)),
            }
        }
    };
    if report.completed
        && s.quit_source
        && let Err(e) = vm.client().execute("quit", None).await
    {
        report.notes.push(format!("quit on the source: {e}"));
    }
    Ok(report)
}

/// What planning decided, for [`run_planned`].
struct Planned {
    inputs: MigrationInputs,
    plan: Plan,
    /// The planner's choice, or the forced one.
    strategy: Option<Strategy>,
    predicted: Option<Prediction>,
    /// What may be done (post-copy is dropped when the destination stops answering).
    allowed: Allowed,
    notes: Vec<String>,
}

/// Configures the source (and the destination, for post-copy), starts the migration and
/// watches it to its end, re-planning from QEMU's live numbers at every poll; the report says
/// how it went. The caller puts back what was unplugged for it, whatever this returns.
async fn run_planned(
    vm: &QemuVm,
    dest: Option<&QemuVm>,
    to: &str,
    s: &Settings,
    planned: Planned,
) -> anyhow::Result<Report> {
    let Planned {
        inputs,
        plan,
        strategy,
        predicted,
        mut allowed,
        notes,
    } = planned;
    // Configure and start.
    vm.migrate_set_capabilities(&[
        (MigrationCapability::Events, true),
        (MigrationCapability::PostcopyRam, allowed.postcopy),
        (
            MigrationCapability::AutoConverge,
            strategy == Some(Strategy::AutoConverge),
        ),
    ])
    .await
    .context("migrate-set-capabilities on the source")?;
    vm.migrate_set_parameters(&MigrationParameters {
        downtime_limit_ms: Some(s.downtime.0),
        max_bandwidth_bytes_per_sec: Some(s.bandwidth.0),
        max_postcopy_bandwidth_bytes_per_sec: Some(s.bandwidth.0),
        ..MigrationParameters::default()
    })
    .await
    .context("migrate-set-parameters on the source")?;
    vm.client().drain_events();
    if let Some(d) = dest {
        d.client().drain_events();
    }
    let mut stopped_at: Option<EventTimestamp> = None;
    let t0 = Instant::now();
    vm.migrate(to).await.context("migrate")?;

    let mut report = Report {
        outcome: String::new(),
        completed: false,
        inputs: inputs.clone(),
        plan,
        strategy,
        predicted_total_ms: predicted.as_ref().and_then(|p| p.total_time).map(|m| m.0),
        predicted_downtime_ms: predicted.as_ref().and_then(|p| p.downtime).map(|m| m.0),
        total_time_ms: None,
        wall_time_ms: 0,
        downtime_ms: None,
        paused_ms: None,
        postcopy_blocktime_ms: None,
        bytes_sent: None,
        passes: None,
        max_cpu_throttle: None,
        switches: Vec::new(),
        pass_log: Vec::new(),
        notes,
        error: None,
        destination_status: None,
        devices: None,
    };
    let mut last_sync = 0;
    let mut last_ram: Option<aerostat_qemu::backend::RamStats> = None;
    let mut switched = false;
    let mut cancelled_by_us = false;
    // The watch's own limits: past `hard_stop` a pre-copy still running is cancelled (the
    // budget's cancel should have come long before); a post-copy cannot be cancelled and is
    // watched until `2 × hard_stop`. A failed `query-migrate` is retried until then: QEMU may
    // hold its lock for seconds (disk flush at the switch), and giving up watching while QEMU
    // goes on migrating would leave the caller believing the guest stayed.
    let hard_stop = Duration::from_millis(s.max_time.0.saturating_mul(10).max(60_000));
    let mut query_failures = 0u32;
    let final_info = loop {
        tokio::time::sleep(POLL).await;
        for ev in vm.client().drain_events() {
            match VmEvent::from(&ev) {
                // The first STOP after the start is the stop-and-copy or the post-copy switch.
                VmEvent::Stop => {
                    stopped_at = stopped_at.or(ev.timestamp);
                }
                VmEvent::Migration { status } => report
                    .notes
                    .push(format!("t+{} ms: MIGRATION {status:?}", ms(t0.elapsed()))),
                VmEvent::MigrationPass { pass } => report
                    .notes
                    .push(format!("t+{} ms: MIGRATION_PASS {pass}", ms(t0.elapsed()))),
                _ => {}
            }
        }
        let info = match vm.query_migrate().await {
            Ok(i) => {
                query_failures = 0;
                i
            }
            Err(e) => {
                query_failures += 1;
                if vm.client().is_closed() || t0.elapsed() > hard_stop * 2 {
                    report.error = Some(format!("query-migrate on the source: {e}"));
                    break None;
                }
                if query_failures == 1 {
                    report.notes.push(format!(
                        "t+{} ms: query-migrate failed ({e}); still watching",
                        ms(t0.elapsed())
                    ));
                }
                continue;
            }
        };
        let elapsed = t0.elapsed();
        if let Some(t) = info.cpu_throttle_percent {
            report.max_cpu_throttle = report.max_cpu_throttle.max(Some(t));
        }
        if info.ram.is_some() {
            last_ram.clone_from(&info.ram);
        }
        match info.status {
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled => {
                break Some(info);
            }
            MigrationStatus::PostcopyPaused | MigrationStatus::PostcopyRecoverSetup => {
                report.error = Some(
                    "post-copy paused: the link or the destination failed after the switch; the \
                 guest is paused until `migrate-recover`/`migrate --resume`"
                        .into(),
                );
                break Some(info);
            }
            _ => {}
        }
        if elapsed > hard_stop {
            let precopy = matches!(
                info.status,
                MigrationStatus::Setup | MigrationStatus::Active | MigrationStatus::PreSwitchover
            );
            if precopy && !cancelled_by_us {
                cancelled_by_us = true;
                report.switches.push(Switch {
                    at_ms: ms(elapsed),
                    action: "migrate_cancel".into(),
                    reason: format!(
                        "still {:?} after {elapsed:?}, the watch's limit: cancelled so that the \
                     guest stays where it is",
                        info.status
                    ),
                });
                if let Err(e) = vm.migrate_cancel().await {
                    report.error = Some(format!("migrate_cancel: {e}"));
                }
                continue;
            }
            if elapsed > hard_stop * 2 {
                report.error = Some(format!(
                    "still {:?} after {elapsed:?}; giving up watching (QEMU goes on)",
                    info.status
                ));
                break Some(info);
            }
        }
        if switched || cancelled_by_us || info.status != MigrationStatus::Active {
            continue;
        }
        let Some(ram) = &info.ram else { continue };
        let page = ram.page_size.unwrap_or(Bytes(4096));
        let live = LiveStats {
            elapsed: Millis(ms(elapsed)),
            transferred: ram.transferred,
            remaining: ram.remaining,
            dirty_rate: Bytes(ram.dirty_pages_per_sec.saturating_mul(page.0)),
            bandwidth: (ram.mbps > 0.0).then(|| Bytes::from_f64(ram.mbps * 1e6 / 8.0)),
            dirty_sync_count: ram.dirty_sync_count,
        };
        let r = replan(&inputs, strategy, allowed, &live);
        if ram.dirty_sync_count != last_sync {
            last_sync = ram.dirty_sync_count;
            report.pass_log.push(PassLine {
                at_ms: live.elapsed.0,
                dirty_sync_count: ram.dirty_sync_count,
                transferred: ram.transferred.0,
                remaining: ram.remaining.0,
                dirty_rate: live.dirty_rate.0,
                mbps: ram.mbps,
                step: r.step,
                reason: r.reason.clone(),
            });
        }
        match r.step {
            Step::Continue => {}
            Step::SwitchToPostcopy => match destination_healthy(dest).await {
                Ok(()) => match vm.migrate_start_postcopy().await {
                    Ok(()) => {
                        switched = true;
                        report.switches.push(Switch {
                            at_ms: ms(t0.elapsed()),
                            action: "migrate-start-postcopy".into(),
                            reason: r.reason,
                        });
                    }
                    Err(e) => {
                        allowed.postcopy = false;
                        report.notes.push(format!(
                            "migrate-start-postcopy failed ({e}): pre-copy only"
                        ));
                    }
                },
                Err(why) => {
                    allowed.postcopy = false;
                    report.notes.push(format!(
                        "t+{} ms: wanted post-copy ({}) but {why}: not switching",
                        live.elapsed.0, r.reason
                    ));
                }
            },
            Step::Cancel => {
                cancelled_by_us = true;
                report.switches.push(Switch {
                    at_ms: live.elapsed.0,
                    action: "migrate_cancel".into(),
                    reason: r.reason,
                });
                if let Err(e) = vm.migrate_cancel().await {
                    report.error = Some(format!("migrate_cancel: {e}"));
                }
            }
        }
    };
    report.wall_time_ms = ms(t0.elapsed());

    if let Some(info) = &final_info {
        report.completed = info.status == MigrationStatus::Completed && report.error.is_none();
        report.outcome = match &info.status {
            MigrationStatus::Completed => "completed".into(),
            MigrationStatus::Cancelled if cancelled_by_us => "cancelled at the budget".into(),
            other => format!("{other:?}").to_lowercase(),
        };
        report.total_time_ms = info
            .total_time_ms
            .filter(|t| *t > 0)
            .or(Some(report.wall_time_ms));
        report.downtime_ms = info.downtime_ms;
        // A cancelled migration's reply has no `ram`: keep what was last seen.
        let ram = info.ram.as_ref().or(last_ram.as_ref());
        report.bytes_sent = ram.map(|r| r.transferred.0);
        report.passes = ram.map(|r| r.dirty_sync_count);
        if let Some(e) = &info.error_desc {
            report.error.get_or_insert_with(|| e.clone());
        }
    } else {
        report.outcome = "unknown".into();
    }
    if info_is_completed(&final_info)
        && let Some(d) = dest
    {
        // The destination reports the post-copy blocktime once it has finished.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match d.query_migrate().await {
                Ok(i) if i.status == MigrationStatus::Completed => {
                    if switched {
                        report.postcopy_blocktime_ms = i.postcopy_blocktime_ms;
                    }
                    break;
                }
                Ok(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                _ => break,
            }
        }
        report.paused_ms = pause_ms(stopped_at, d);
        report.destination_status = d
            .query_status()
            .await
            .ok()
            .map(|st| format!("{:?}", st.status).to_lowercase());
    }
    Ok(report)
}

/// One line on where the handed-off devices went back, for errors.
fn replug_summary(r: &HandoffReport) -> String {
    let mut out = match &r.replugged_on {
        None => "not plugged back".to_string(),
        Some(side) if r.replugged.is_empty() => format!("nothing plugged back on the {side}"),
        Some(side) => format!("plugged back on the {side}: {}", r.replugged.join(", ")),
    };
    if !r.replug_errors.is_empty() {
        out.push_str(&format!("; refused: {}", r.replug_errors.join("; ")));
    }
    out
}

/// What the guest holds that is not zero, for the first pass's size: at most the resident
/// part of its RAM mapping in QEMU (a host fact: pages never touched are not resident), and —
/// when the guest reports its free memory — about what its balloon leaves it minus what it
/// calls free (`actual − free`: kernel, programs, cache). That second number is the guest's
/// claim and may be wrong (free pages can hold stale data, a guest can lie); it only sets the
/// first prediction: the re-plan from QEMU's live counters corrects it pass by pass.
async fn estimate_nonzero(
    vm: &QemuVm,
    memory: Bytes,
    fresh_after_ms: u64,
    notes: &mut Vec<String>,
) -> Option<Bytes> {
    let host_bound = match vm.query_guest_ram_rss(memory) {
        Ok(Some(r)) => Some(("the guest RAM mapping's RSS", r)),
        _ => vm.query_rss().ok().map(|r| ("QEMU's RSS", r)),
    };
    // Wait briefly for a report newer than the probes' start (1 s polling).
    let deadline = Instant::now() + Duration::from_secs(3);
    let free = loop {
        match vm.guest_stats().await {
            Ok(st) if st.last_update.is_some_and(|t| t.0 >= fresh_after_ms) => break st.free,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            _ => {
                notes.push("no fresh guest statistics: zero pages estimated from RSS".into());
                break None;
            }
        }
    };
    let guest_claim = match (free, vm.query_balloon().await) {
        (Some(free), Ok(actual)) => Some(actual - free),
        _ => None,
    };
    let (why, bound) = match (host_bound, guest_claim) {
        (Some((what, h)), Some(g)) if g < h => {
            notes.push(format!(
                "non-zero memory ≈ {g} (balloon actual − guest free; {what} {h})"
            ));
            return Some(g);
        }
        (Some((what, h)), _) => (what, h),
        (None, Some(g)) => ("balloon actual − guest free", g),
        (None, None) => return None,
    };
    notes.push(format!("non-zero memory ≤ {bound} ({why})"));
    Some(bound)
}

/// Host wall clock, milliseconds since the epoch: QEMU stamps guest statistics with it.
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The source's `STOP` to the destination's `RESUME`, from QEMU's own event timestamps.
fn pause_ms(stopped: Option<EventTimestamp>, dest: &QemuVm) -> Option<u64> {
    let stop = stopped?;
    let resume = dest
        .client()
        .drain_events()
        .into_iter()
        .filter(|ev| ev.name == "RESUME")
        .find_map(|ev| ev.timestamp)?;
    let us = |t: EventTimestamp| {
        t.seconds
            .checked_mul(1_000_000)?
            .checked_add(u64::from(t.microseconds))
    };
    Some(us(resume)?.checked_sub(us(stop)?)? / 1000)
}

fn info_is_completed(info: &Option<aerostat_qemu::backend::MigrationInfo>) -> bool {
    info.as_ref()
        .is_some_and(|i| i.status == MigrationStatus::Completed)
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "plan: {}", r.plan.reason);
    for p in &r.plan.predictions {
        let _ = writeln!(
            o,
            "  {:28} converges {:5} lands {:5} total {:>9} downtime {:>8} sent {:>10} passes {}",
            p.strategy.as_str(),
            p.converges,
            p.lands,
            p.total_time.map_or("-".into(), |t| t.to_string()),
            p.downtime.map_or("-".into(), |t| t.to_string()),
            p.bytes_sent.map_or("-".into(), |b| b.to_string()),
            p.passes
        );
    }
    let _ = writeln!(
        o,
        "strategy: {}",
        r.strategy.map_or("none".into(), |s| s.to_string())
    );
    for line in &r.pass_log {
        let _ = writeln!(
            o,
            "  t+{:>6} ms sync {:>3} sent {:>10} remaining {:>10} dirty {:>9}/s {:>7.1} Mbit/s: {:?} — {}",
            line.at_ms,
            line.dirty_sync_count,
            Bytes(line.transferred).to_string(),
            Bytes(line.remaining).to_string(),
            Bytes(line.dirty_rate).to_string(),
            line.mbps,
            line.step,
            line.reason
        );
    }
    for s in &r.switches {
        let _ = writeln!(o, "switch at t+{} ms: {} — {}", s.at_ms, s.action, s.reason);
    }
    for n in &r.notes {
        let _ = writeln!(o, "note: {n}");
    }
    if let Some(t) = r.max_cpu_throttle {
        let _ = writeln!(o, "auto-converge throttle reached {t} %");
    }
    let _ = writeln!(
        o,
        "outcome: {} | total {} (predicted {}) | downtime {} (predicted {}) | paused STOP→RESUME {} | post-copy blocktime {} | sent {} | passes {}",
        r.outcome,
        opt_ms(r.total_time_ms),
        opt_ms(r.predicted_total_ms),
        opt_ms(r.downtime_ms),
        opt_ms(r.predicted_downtime_ms),
        opt_ms(r.paused_ms),
        opt_ms(r.postcopy_blocktime_ms),
        r.bytes_sent.map_or("-".into(), |b| Bytes(b).to_string()),
        r.passes.map_or("-".into(), |p| p.to_string()),
    );
    if let Some(st) = &r.destination_status {
        let _ = writeln!(o, "destination: {st}");
    }
    if let Some(d) = &r.devices {
        let _ = writeln!(
            o,
            "devices: unplugged {} in {}; {}",
            d.unplugged.join(", "),
            opt_ms(d.unplug_ms),
            replug_summary(d)
        );
    }
    if let Some(e) = &r.error {
        let _ = writeln!(o, "error: {e}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> MigrateArgs {
        let mut argv = vec!["aerostat", "migrate", "/tmp/src.qmp", "--to", "tcp:h:1"];
        argv.extend(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Migrate(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_qemus() {
        let s = parse_settings(&args(&[])).expect("defaults parse");
        assert_eq!(s.downtime, Millis(300));
        assert_eq!(s.max_time, Millis::secs(60));
        assert_eq!(s.bandwidth, Bytes::mib(128));
        assert_eq!(s.forced, None);
        assert_eq!(s.max_bytes, None, "no traffic budget unless asked");
        let s = parse_settings(&args(&["--max-bytes", "20GiB"])).expect("a size");
        assert_eq!(s.max_bytes, Some(Bytes::gib(20)));
    }

    #[test]
    fn bad_flags_are_input_errors() {
        for bad in [
            &["--bandwidth", "128MiB"][..],
            &["--bandwidth", "0MiB/s"],
            &["--downtime", "300"],
            &["--max-time", "soon"],
            &["--max-bytes", "0B"],
            &["--max-bytes", "20 gigs"],
            &["--strategy", "teleport"],
        ] {
            assert!(parse_settings(&args(bad)).is_err(), "{bad:?}");
        }
        let s = parse_settings(&args(&[
            "--strategy",
            "auto-converge",
            "--bandwidth",
            "32MiB/s",
        ]))
        .expect("parses");
        assert_eq!(s.forced, Some(Strategy::AutoConverge));
        assert_eq!(s.bandwidth, Bytes::mib(32));
    }

    #[test]
    fn devices_to_hand_off_are_checked_before_anything_is_unplugged() {
        let step = r#"{"execute": "device_add", "arguments": {"driver": "nvme", "id": "nv0"}}"#;
        for (bad, says) in [
            (&["--replug", step][..], "plugs back what --unplug takes"),
            (&["--unplug", "../balloon0"], "not a QEMU device id"),
            (
                &["--unplug", "nv0", "--replug", "device_add nv0"],
                "#1: not JSON",
            ),
            (
                &[
                    "--unplug",
                    "nv0",
                    "--replug",
                    step,
                    "--replug",
                    r#"{"execute": "quit", "arguments": {}}"#,
                ],
                "#2: `quit` is not a plug command",
            ),
        ] {
            let e = parse_settings(&args(bad)).expect_err("refused").0;
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let s = parse_settings(&args(&["--unplug", "nv0", "--replug", step])).expect("parses");
        assert_eq!(s.handoff.unplug, vec!["nv0".to_string()]);
        assert_eq!(s.handoff.replug.len(), 1);
        assert!(
            parse_settings(&args(&[]))
                .expect("parses")
                .handoff
                .is_empty()
        );
    }
}
