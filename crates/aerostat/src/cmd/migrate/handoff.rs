//! Devices that keep a guest from migrating, handed off around the migration: unplugged from
//! the source before it (the guest quiesces the device and lets go of its pinned DMA memory
//! when it ejects it), plugged back after it — on the destination when the guest landed
//! there, on the source when it did not. This is how a passthrough NIC or GPU guest moves
//! (OpenStack Nova does the same for SR-IOV ports); without it QEMU refuses the migration
//! while the device is there.
//!
//! Order, and why:
//! 1. `device_del` every listed device the guest has (one it does not have is skipped), then
//!    wait until the guest let go of each (up to [`UNPLUG_TIMEOUT`]): QEMU keeps the device
//!    until the guest ejected it.
//! 2. Read QEMU's `blocked-reasons` again. Anything left (a device nobody listed) means QEMU
//!    would still refuse: plug back and stop here, without starting a migration
//!    ([`StillBlocked`]).
//! 3. After the migration, ask the source QEMU how it ended — not the report, whose watch can
//!    give up on a migration that goes on — and wait while it has not: QEMU refuses hot-plug
//!    during a migration, and plugging into a source the guest is about to leave loses the
//!    device. Then plug back where the guest runs.
//!
//! Only what was unplugged is plugged back: a `device_add` step whose `id` the guest did not
//! give up is skipped (a `[vm_defaults]` list names devices some guests never had), and the
//! other steps (the backends a device needs) run only when some device went. On the source a
//! device whose eject is still under way is waited for first, so that it is not plugged back
//! while the guest is still ejecting it (QEMU would refuse the duplicate id, and the eject
//! would then leave the guest without it). A step that fails is recorded and the next one
//! still runs: on the source a backend `device_del` left behind is usually still there.

use std::time::{Duration, Instant};

use aerostat_qemu::QemuVm;
use aerostat_qemu::backend::{MigrationStatus, PlugCommand, is_qemu_id};
use serde::Serialize;
use serde_json::Value;

/// How long a guest has to eject a device after `device_del`. An ACPI hot-plug eject of an
/// idle device took 0.2–0.3 s on the lab's TCG guests; a NIC or GPU driver quiescing DMA takes
/// longer, a guest without a hot-plug driver forever.
pub const UNPLUG_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the replug after a migration waits for it to end (a watch that gave up, a
/// post-copy still finishing) before it gives up and says so.
pub const END_TIMEOUT: Duration = Duration::from_secs(60);

/// The devices to hand off, and how to plug them back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Handoff {
    /// Device ids (`-device …,id=ID`) to unplug before the migration.
    pub unplug: Vec<String>,
    /// QMP steps that plug them back (on whichever side the guest runs afterwards).
    pub replug: Vec<PlugCommand>,
}

/// The handoff stopped the migration: QEMU still lists blockers after the unplug. The escape
/// keeps such a guest where it is while its blockers stay the same.
#[derive(Debug, thiserror::Error)]
#[error("QEMU still blocks the migration after unplugging {unplugged}: {}", .blockers.join("; "))]
pub struct StillBlocked {
    pub unplugged: String,
    pub blockers: Vec<String>,
}

/// What the handoff did, for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HandoffReport {
    /// Devices the guest let go of.
    pub unplugged: Vec<String>,
    /// Devices `device_del` was sent for (an eject may still be under way for some).
    #[serde(skip)]
    pub asked: Vec<String>,
    /// From the first `device_del` until the last device was gone.
    pub unplug_ms: Option<u64>,
    /// `destination` or `source`: where the replug steps ran; `None` if they did not.
    pub replugged_on: Option<String>,
    /// Steps that ran and QEMU accepted, by name (`device_add nic0`).
    pub replugged: Vec<String>,
    /// Steps QEMU refused, could not be sent, or that did not run, with why.
    pub replug_errors: Vec<String>,
}

impl Handoff {
    /// Checks an operator's lists: device ids by QEMU's rule, steps by [`PlugCommand`]'s.
    /// `unplug_name` and `step_name(i)` name the inputs in errors (a flag, a config key).
    pub fn parse(
        unplug: &[String],
        replug: &[Value],
        unplug_name: &str,
        step_name: impl Fn(usize) -> String,
    ) -> Result<Handoff, String> {
        if let Some(bad) = unplug.iter().find(|id| !is_qemu_id(id)) {
            return Err(format!(
                "{unplug_name}: `{bad}` is not a QEMU device id (a letter, then letters, digits, \
                 `-`, `.`, `_`)"
            ));
        }
        let replug = replug
            .iter()
            .enumerate()
            .map(|(i, v)| PlugCommand::from_value(v).map_err(|e| format!("{}: {e}", step_name(i))))
            .collect::<Result<Vec<_>, _>>()?;
        if unplug.is_empty() && !replug.is_empty() {
            return Err(format!(
                "{}: plugs back what {unplug_name} takes, and that is empty",
                step_name(0)
            ));
        }
        Ok(Handoff {
            unplug: unplug.to_vec(),
            replug,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.unplug.is_empty() && self.replug.is_empty()
    }

    /// Step 1 and 2 of the module docs. On `Err` what was unplugged has been plugged back on
    /// the source as far as QEMU let it; the message says what stood in the way (a
    /// [`StillBlocked`] inside when blockers were left), the report what the replug did.
    pub async fn unplug(
        &self,
        vm: &QemuVm,
    ) -> Result<HandoffReport, (anyhow::Error, HandoffReport)> {
        let mut report = HandoffReport::default();
        let start = Instant::now();
        let failure = self.unplug_each(vm, &mut report).await.err();
        let failure = match failure {
            Some(e) => e,
            None => {
                report.unplug_ms = Some(u64::try_from(start.elapsed().as_millis()).unwrap_or(0));
                match vm.query_migrate().await {
                    Ok(info) if info.blocked_reasons.is_empty() => return Ok(report),
                    Ok(info) => anyhow::Error::new(StillBlocked {
                        unplugged: if report.unplugged.is_empty() {
                            "nothing (the guest has none of the devices)".into()
                        } else {
                            report.unplugged.join(", ")
                        },
                        blockers: info.blocked_reasons,
                    }),
                    Err(e) => anyhow::anyhow!("query-migrate after unplugging: {e}"),
                }
            }
        };
        self.replug_into(vm, "source", &mut report).await;
        Err((failure, report))
    }

    async fn unplug_each(&self, vm: &QemuVm, report: &mut HandoffReport) -> anyhow::Result<()> {
        for id in &self.unplug {
            if !vm.has_device(id).await? {
                continue;
            }
            vm.device_del(id)
                .await
                .map_err(|e| anyhow::anyhow!("device_del {id}: {e}"))?;
            report.asked.push(id.clone());
            match vm.wait_device_gone(id, UNPLUG_TIMEOUT).await {
                Ok(true) => report.unplugged.push(id.clone()),
                Ok(false) => anyhow::bail!(
                    "the guest did not eject {id} within {UNPLUG_TIMEOUT:?} of device_del (no \
                     hot-plug support in the guest, or its driver would not let go)"
                ),
                Err(e) => anyhow::bail!("waiting for {id} to go: {e}"),
            }
        }
        Ok(())
    }

    /// Step 3: once the source QEMU says the migration ended, plugs back on the destination
    /// if it completed, else on the source. Without a destination connection a completed
    /// migration leaves the devices unplugged (`aerostat migrate` refuses to start so), and a
    /// migration that does not end within `wait` ([`END_TIMEOUT`] after a migration) leaves
    /// them where they are; the report says so either way.
    pub async fn replug_after(
        &self,
        source: &QemuVm,
        destination: Option<&QemuVm>,
        report: &mut HandoffReport,
        wait: Duration,
    ) {
        if report.asked.is_empty() {
            return;
        }
        let deadline = Instant::now() + wait;
        let ended = loop {
            match source.query_migrate().await.map(|i| i.status) {
                Ok(s) if s.is_finished() || s == MigrationStatus::None => break Some(s),
                _ if Instant::now() >= deadline => break None,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        match (ended, destination) {
            (Some(MigrationStatus::Completed), Some(d)) => {
                self.replug_into(d, "destination", report).await
            }
            (Some(MigrationStatus::Completed), None) => report.replug_errors.push(
                "the guest landed on the destination, and there is no destination QMP \
                 connection to plug its devices back in: they stay unplugged"
                    .into(),
            ),
            (Some(_), _) => self.replug_into(source, "source", report).await,
            (None, _) => report.replug_errors.push(format!(
                "the migration had not ended {wait:?} after the watch: not plugged back on \
                 either side (QEMU refuses hot-plug while it migrates)"
            )),
        }
    }

    async fn replug_into(&self, vm: &QemuVm, side: &str, report: &mut HandoffReport) {
        if side == "source" {
            // An eject still under way would remove the device after it was plugged back.
            for id in &report.asked {
                if !report.unplugged.contains(id)
                    && let Ok(true) = vm.wait_device_gone(id, UNPLUG_TIMEOUT).await
                {
                    report.unplugged.push(id.clone());
                }
            }
        }
        if report.unplugged.is_empty() {
            return;
        }
        report.replugged_on = Some(side.into());
        for step in &self.replug {
            let device = (step.execute == "device_add")
                .then(|| step.arguments.get("id").and_then(Value::as_str))
                .flatten();
            if let Some(id) = device
                && !report.unplugged.iter().any(|u| u == id)
            {
                continue;
            }
            match plug_with_retries(vm, step).await {
                Ok(()) => report.replugged.push(step.names()),
                Err(e) => report
                    .replug_errors
                    .push(format!("{} on the {side}: {e}", step.names())),
            }
        }
    }
}

/// A step QEMU refuses is tried again for a while: a device the guest just ejected leaves the
/// QOM tree before QEMU has let go of its backends, and plugging it back at once was refused
/// ("Permission conflict on node 'nvd'", once in the lab) where a moment later it is not.
async fn plug_with_retries(vm: &QemuVm, step: &PlugCommand) -> Result<(), aerostat_qemu::QmpError> {
    const TRIES: u32 = 10;
    let mut tries = 0;
    loop {
        match vm.plug(step).await {
            Err(e) if e.command_class().is_some() && tries + 1 < TRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
