//! The handoff's paths against a fake QEMU: what is unplugged, when and where it goes back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aerostat_qemu::qmp::testing::{FakeQmp, Out, err, ok};
use aerostat_qemu::{QemuVm, QmpOptions};
use serde_json::{Value, json};

use super::*;

/// A fake guest: the devices it has, what `query-migrate` says next, and the blockers.
#[derive(Default)]
struct Qemu {
    devices: Vec<String>,
    /// Statuses `query-migrate` gives in turn; the last one stays.
    statuses: VecDeque<&'static str>,
    blockers: Vec<&'static str>,
}

fn answer(q: &mut Qemu, cmd: &Value) -> Vec<Out> {
    let args = &cmd["arguments"];
    let reply = match cmd["execute"].as_str().unwrap_or_default() {
        "qom-list" => Value::Array(
            q.devices
                .iter()
                .map(|d| json!({"name": d, "type": "child<nvme>"}))
                .collect(),
        ),
        "device_del" => {
            let id = args["id"].as_str().unwrap_or_default();
            if !q.devices.iter().any(|d| d == id) {
                return vec![err(cmd, "DeviceNotFound", "no such device")];
            }
            q.devices.retain(|d| d != id);
            json!({})
        }
        "device_add" => {
            let id = args["id"].as_str().unwrap_or_default().to_string();
            if q.devices.contains(&id) {
                return vec![err(cmd, "GenericError", "Duplicate device ID")];
            }
            q.devices.push(id);
            json!({})
        }
        "blockdev-add" => json!({}),
        "query-migrate" => {
            let status = if q.statuses.len() > 1 {
                q.statuses.pop_front()
            } else {
                q.statuses.front().copied()
            };
            let mut r = json!({});
            if let Some(s) = status {
                r["status"] = json!(s);
            }
            if !q.blockers.is_empty() {
                r["blocked-reasons"] = json!(q.blockers);
            }
            r
        }
        _ => return vec![err(cmd, "CommandNotFound", "not in this fake")],
    };
    vec![ok(cmd, reply)]
}

async fn fake(q: Qemu) -> (FakeQmp, Arc<Mutex<Qemu>>, QemuVm) {
    let q = Arc::new(Mutex::new(q));
    let model = Arc::clone(&q);
    let fake = FakeQmp::qemu(move |cmd| answer(&mut model.lock().expect("qemu"), cmd));
    let opts = QmpOptions {
        handshake_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
    };
    let vm = QemuVm::connect_with(&fake.path, opts)
        .await
        .expect("connect");
    (fake, q, vm)
}

fn handoff() -> Handoff {
    Handoff::parse(
        &["nv0".to_string()],
        &[
            json!({"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "nvd"}}),
            json!({"execute": "device_add", "arguments": {"driver": "nvme", "drive": "nvd", "id": "nv0"}}),
        ],
        "--unplug",
        |i| format!("--replug #{}", i + 1),
    )
    .expect("valid")
}

fn with(devices: &[&str]) -> Qemu {
    Qemu {
        devices: devices.iter().map(|d| d.to_string()).collect(),
        ..Qemu::default()
    }
}

#[tokio::test]
async fn a_completed_migration_plugs_the_device_in_on_the_destination_only() {
    let (_f, src_state, src) = fake(with(&["nv0"])).await;
    let (_g, dst_state, dst) = fake(with(&[])).await;
    let h = handoff();
    let mut report = h.unplug(&src).await.expect("unplugged");
    assert_eq!(report.unplugged, ["nv0"]);
    assert!(src_state.lock().expect("q").devices.is_empty());
    // The source reports the migration active twice before it completes: the replug waits.
    src_state.lock().expect("q").statuses = VecDeque::from(["active", "active", "completed"]);
    h.replug_after(&src, Some(&dst), &mut report, END_TIMEOUT)
        .await;
    assert_eq!(report.replugged_on.as_deref(), Some("destination"));
    assert_eq!(report.replugged, ["blockdev-add nvd", "device_add nv0"]);
    assert!(
        report.replug_errors.is_empty(),
        "{:?}",
        report.replug_errors
    );
    assert_eq!(dst_state.lock().expect("q").devices, ["nv0"]);
    assert!(src_state.lock().expect("q").devices.is_empty());
}

#[tokio::test]
async fn a_failed_migration_plugs_the_device_back_into_the_source() {
    let (_f, src_state, src) = fake(with(&["nv0"])).await;
    let (_g, dst_state, dst) = fake(with(&[])).await;
    let h = handoff();
    let mut report = h.unplug(&src).await.expect("unplugged");
    src_state.lock().expect("q").statuses = VecDeque::from(["cancelling", "cancelled"]);
    h.replug_after(&src, Some(&dst), &mut report, END_TIMEOUT)
        .await;
    assert_eq!(report.replugged_on.as_deref(), Some("source"));
    assert_eq!(src_state.lock().expect("q").devices, ["nv0"]);
    assert!(dst_state.lock().expect("q").devices.is_empty());
}

/// A `[vm_defaults]` list names a device this guest never had: nothing is unplugged, the
/// migration goes on, and nothing is plugged in on either side.
#[tokio::test]
async fn a_device_the_guest_never_had_is_neither_unplugged_nor_plugged_in() {
    let (f, _src_state, src) = fake(with(&[])).await;
    let (_g, dst_state, dst) = fake(with(&[])).await;
    let h = handoff();
    let mut report = h.unplug(&src).await.expect("nothing to unplug is fine");
    assert!(report.unplugged.is_empty() && report.asked.is_empty());
    assert!(!f.commands().contains(&"device_del".to_string()));
    h.replug_after(&src, Some(&dst), &mut report, END_TIMEOUT)
        .await;
    assert_eq!(report.replugged_on, None);
    assert!(dst_state.lock().expect("q").devices.is_empty());
}

/// A blocker no listed device explains: the device goes back at once, and the error says
/// what still blocks — as a `StillBlocked` the escape can find under any context.
#[tokio::test]
async fn blockers_left_after_the_unplug_stop_everything_and_the_device_goes_back() {
    let mut q = with(&["nv0"]);
    q.blockers = vec!["Migration is disabled when using feature 'peer mode' in device 'ivshmem'"];
    let (_f, src_state, src) = fake(q).await;
    let (e, report) = handoff().unplug(&src).await.expect_err("still blocked");
    assert_eq!(report.replugged_on.as_deref(), Some("source"));
    assert_eq!(src_state.lock().expect("q").devices, ["nv0"]);
    let e = e.context("no migration started");
    let still = e.downcast_ref::<StillBlocked>().expect("typed");
    assert!(still.blockers[0].contains("ivshmem"));
    assert!(format!("{e:#}").contains("still blocks the migration after unplugging nv0"));
}

/// Only the devices that went come back: a `device_add` for one still there is skipped.
#[tokio::test]
async fn only_what_was_unplugged_is_plugged_back() {
    let h = Handoff::parse(
        &["nv0".to_string(), "nv1".to_string()],
        &[
            json!({"execute": "device_add", "arguments": {"driver": "nvme", "id": "nv0"}}),
            json!({"execute": "device_add", "arguments": {"driver": "nvme", "id": "nv1"}}),
        ],
        "--unplug",
        |i| format!("--replug #{}", i + 1),
    )
    .expect("valid");
    let (_f, src_state, src) = fake(with(&["nv1"])).await;
    let (_g, dst_state, dst) = fake(with(&[])).await;
    let mut report = h.unplug(&src).await.expect("unplugged");
    assert_eq!(report.unplugged, ["nv1"]);
    src_state.lock().expect("q").statuses = VecDeque::from(["completed"]);
    h.replug_after(&src, Some(&dst), &mut report, END_TIMEOUT)
        .await;
    assert_eq!(dst_state.lock().expect("q").devices, ["nv1"]);
    assert_eq!(report.replugged, ["device_add nv1"]);
}

/// With no destination connection a completed migration cannot get its devices back, and the
/// report says so (`aerostat migrate` refuses to unplug without one; the daemon's shutdown
/// path has none).
#[tokio::test]
async fn without_a_destination_a_landed_guest_is_reported_without_its_devices() {
    let (_f, src_state, src) = fake(with(&["nv0"])).await;
    let h = handoff();
    let mut report = h.unplug(&src).await.expect("unplugged");
    src_state.lock().expect("q").statuses = VecDeque::from(["completed"]);
    h.replug_after(&src, None, &mut report, END_TIMEOUT).await;
    assert_eq!(report.replugged_on, None);
    assert!(report.replug_errors[0].contains("stay unplugged"));
    assert!(src_state.lock().expect("q").devices.is_empty());
}
