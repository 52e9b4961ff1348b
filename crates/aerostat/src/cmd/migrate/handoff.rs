//! Devices that keep a guest from migrating, handed off around the migration: unplugged from
//! the source before it (the guest quiesces the device and lets go of its pinned DMA memory
//! when it ejects it), plugged back after it — on the destination when the guest landed
//! there, on the source when it did not. This is how a passthrough NIC or GPU guest moves
//! (OpenStack Nova does the same for SR-IOV ports); without it QEMU refuses the migration
//! while the device is there.
//!
//! Order, and why:
//! 1. `device_del` every listed device, then wait until the guest let go of each (up to
//!    [`UNPLUG_TIMEOUT`]): QEMU keeps the device until the guest ejected it.
//! 2. Read QEMU's `blocked-reasons` again. Anything left (a device nobody listed) means QEMU
//!    would still refuse: plug back and stop here, without starting a migration.
//! 3. After the migration, ask the source QEMU how it ended — not the report, whose watch can
//!    give up on a migration that goes on — and plug back where the guest runs.
//!
//! A plug step that fails is recorded and the next one still runs: on the source some of what
//! a step list creates may still be there (a block node `device_del` left behind), and the
//! device step after it is what matters.

use std::time::{Duration, Instant};

use aerostat_qemu::QemuVm;
use aerostat_qemu::backend::{MigrationStatus, PlugCommand};
use serde::Serialize;

/// How long a guest has to eject a device after `device_del`. An ACPI hot-plug eject of an
/// idle device took 0.2–0.3 s on the lab's TCG guests; a NIC or GPU driver quiescing DMA takes
/// longer, a guest without a hot-plug driver forever.
pub const UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);

/// The devices to hand off, and how to plug them back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Handoff {
    /// Device ids (`-device …,id=ID`) to unplug before the migration.
    pub unplug: Vec<String>,
    /// QMP steps that plug them back (on whichever side the guest runs afterwards).
    pub replug: Vec<PlugCommand>,
}

/// What the handoff did, for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HandoffReport {
    /// Devices the guest let go of.
    pub unplugged: Vec<String>,
    /// From the first `device_del` until the last device was gone.
    pub unplug_ms: Option<u64>,
    /// `destination` or `source`: where the replug steps ran; `None` if they did not.
    pub replugged_on: Option<String>,
    /// Steps that ran and QEMU accepted, by name (`device_add nic0`).
    pub replugged: Vec<String>,
    /// Steps QEMU refused, or could not be sent, with why.
    pub replug_errors: Vec<String>,
}

impl Handoff {
    pub fn is_empty(&self) -> bool {
        self.unplug.is_empty() && self.replug.is_empty()
    }

    /// Step 1 and 2 of the module docs. On `Err` every step has been undone as far as QEMU
    /// let it (the devices plugged back on the source) and the message says what stood in
    /// the way; the report then tells what the replug did.
    pub async fn unplug(
        &self,
        vm: &QemuVm,
    ) -> Result<HandoffReport, (anyhow::Error, HandoffReport)> {
        let mut report = HandoffReport::default();
        let start = Instant::now();
        let mut failure = None;
        for id in &self.unplug {
            if let Err(e) = vm.device_del(id).await {
                failure = Some(anyhow::anyhow!("device_del {id}: {e}"));
                break;
            }
            match vm.wait_device_gone(id, UNPLUG_TIMEOUT).await {
                Ok(true) => report.unplugged.push(id.clone()),
                Ok(false) => {
                    failure = Some(anyhow::anyhow!(
                        "the guest did not eject {id} within {UNPLUG_TIMEOUT:?} of device_del \
                         (no hot-plug support in the guest, or its driver would not let go)"
                    ));
                    break;
                }
                Err(e) => {
                    failure = Some(anyhow::anyhow!("waiting for {id} to go: {e}"));
                    break;
                }
            }
        }
        if failure.is_none() {
            report.unplug_ms = Some(u64::try_from(start.elapsed().as_millis()).unwrap_or(0));
            match vm.query_migrate().await {
                Ok(info) if info.blocked_reasons.is_empty() => return Ok(report),
                Ok(info) => {
                    failure = Some(anyhow::anyhow!(
                        "QEMU still blocks the migration after unplugging {}: {}",
                        self.unplug.join(", "),
                        info.blocked_reasons.join("; ")
                    ))
                }
                Err(e) => failure = Some(anyhow::anyhow!("query-migrate after unplugging: {e}")),
            }
        }
        self.replug_into(vm, "source", &mut report).await;
        Err((
            failure.unwrap_or_else(|| anyhow::anyhow!("unplug failed")),
            report,
        ))
    }

    /// Step 3: plugs back on the destination if the source QEMU says the migration
    /// completed, else on the source. Without a destination connection a completed
    /// migration leaves the devices unplugged, and the report says so.
    pub async fn replug_after(
        &self,
        source: &QemuVm,
        destination: Option<&QemuVm>,
        report: &mut HandoffReport,
    ) {
        let landed = matches!(
            source.query_migrate().await.map(|i| i.status),
            Ok(MigrationStatus::Completed)
        );
        match (landed, destination) {
            (true, Some(d)) => self.replug_into(d, "destination", report).await,
            (true, None) => report.replug_errors.push(
                "the guest landed on the destination, and there is no destination QMP \
                 connection to plug its devices back in: they stay unplugged"
                    .into(),
            ),
            (false, _) => self.replug_into(source, "source", report).await,
        }
    }

    async fn replug_into(&self, vm: &QemuVm, side: &str, report: &mut HandoffReport) {
        report.replugged_on = Some(side.into());
        for step in &self.replug {
            match vm.plug(step).await {
                Ok(()) => report.replugged.push(step.names()),
                Err(e) => report
                    .replug_errors
                    .push(format!("{} on the {side}: {e}", step.names())),
            }
        }
    }
}
