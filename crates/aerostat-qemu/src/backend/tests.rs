//! Backend round trips against the fake QMP server: the right commands go out, replies come
//! back typed.

use std::time::Duration;

use aerostat_core::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::qmp::testing::{FakeQmp, err, ok};

/// A fake QEMU with a balloon under `/machine/peripheral-anon` only.
fn fake_vm() -> FakeQmp {
    FakeQmp::qemu(|cmd| {
        let args = &cmd["arguments"];
        match cmd["execute"].as_str().unwrap_or("") {
            "query-balloon" => vec![ok(cmd, json!({"actual": 536870912}))],
            "balloon" => vec![ok(cmd, json!({}))],
            "qom-list" if args["path"] == "/machine/peripheral" => {
                vec![ok(cmd, json!([{"name": "type", "type": "string"}]))]
            }
            "qom-list" if args["path"] == "/machine/peripheral-anon" => vec![ok(
                cmd,
                json!([{"name": "type", "type": "string"},
                       {"name": "device[0]", "type": "child<virtio-balloon-pci>"}]),
            )],
            "qom-set" => vec![ok(cmd, json!({}))],
            "qom-get" if args["property"] == "deflate-on-oom" => vec![ok(cmd, json!(true))],
            "qom-get" if args["property"] == "guest-stats" => vec![ok(
                cmd,
                json!({"stats": {"stat-free-memory": 1000, "stat-total-memory": u64::MAX},
                       "last-update": 5}),
            )],
            "query-status" => vec![ok(cmd, json!({"status": "prelaunch", "running": false}))],
            "query-migrate" => vec![ok(cmd, json!({}))],
            "query-memory-devices" => vec![ok(cmd, json!([]))],
            "migrate-set-capabilities"
            | "migrate-set-parameters"
            | "migrate"
            | "migrate_cancel"
            | "calc-dirty-rate" => vec![ok(cmd, json!({}))],
            "migrate-start-postcopy" => vec![err(
                cmd,
                "GenericError",
                "Enable postcopy with migrate_set_capability before the start of migration",
            )],
            "query-dirty-rate" => vec![ok(cmd, json!({"status": "measuring"}))],
            _ => vec![err(cmd, "CommandNotFound", "no")],
        }
    })
}

async fn vm(fake: &FakeQmp) -> QemuVm {
    let opts = QmpOptions {
        handshake_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
    };
    QemuVm::connect_with(&fake.path, opts)
        .await
        .expect("connect")
}

fn sent(fake: &FakeQmp, command: &str) -> Vec<Value> {
    fake.received
        .lock()
        .expect("lock")
        .iter()
        .filter(|c| c["execute"] == command)
        .map(|c| c["arguments"].clone())
        .collect()
}

#[tokio::test]
async fn balloon_round_trip() {
    let fake = fake_vm();
    let vm = vm(&fake).await;
    assert_eq!(vm.query_balloon().await.expect("actual"), Bytes::mib(512));
    vm.set_balloon(Bytes::mib(400)).await.expect("balloon");
    assert_eq!(sent(&fake, "balloon"), vec![json!({"value": 419430400})]);
    assert!(matches!(
        vm.set_balloon(Bytes(u64::MAX)).await,
        Err(QmpError::InvalidArgument { .. })
    ));
}

#[tokio::test]
async fn balloon_path_is_found_once_and_used() {
    let fake = fake_vm();
    let vm = vm(&fake).await;
    assert_eq!(
        vm.find_balloon_path().await.expect("qom-list").as_deref(),
        Some("/machine/peripheral-anon/device[0]")
    );
    vm.enable_stats_polling(2).await.expect("polling");
    let stats = vm.guest_stats().await.expect("stats");
    assert_eq!(stats.free, Some(Bytes(1000)));
    assert_eq!(stats.total, None);
    assert_eq!(stats.last_update, Some(aerostat_core::Millis(5000)));
    assert_eq!(sent(&fake, "qom-list").len(), 2, "found once, then cached");
    assert_eq!(
        sent(&fake, "qom-set"),
        vec![json!({"path": "/machine/peripheral-anon/device[0]",
                    "property": "guest-stats-polling-interval", "value": 2})]
    );
}

/// The balloon's `deflate-on-oom` is read from its QOM path; a reply that is not a
/// boolean is a protocol error, not a guess.
#[tokio::test]
async fn deflate_on_oom_is_read_from_the_balloon() {
    let fake = fake_vm();
    let qemu = vm(&fake).await;
    assert!(qemu.balloon_deflates_on_oom().await.expect("qom-get"));
    assert_eq!(
        sent(&fake, "qom-get"),
        vec![json!({"path": "/machine/peripheral-anon/device[0]", "property": "deflate-on-oom"})]
    );
    let odd = FakeQmp::qemu(|cmd| match cmd["execute"].as_str().unwrap_or("") {
        "qom-list" => vec![ok(
            cmd,
            json!([{"name": "balloon0", "type": "child<virtio-balloon-pci>"}]),
        )],
        _ => vec![ok(cmd, json!("yes"))],
    });
    let qemu = vm(&odd).await;
    assert!(matches!(
        qemu.balloon_deflates_on_oom().await,
        Err(QmpError::Protocol { .. })
    ));
}

#[tokio::test]
async fn no_balloon_is_no_device() {
    let fake = FakeQmp::qemu(|cmd| vec![ok(cmd, json!([{"name": "type", "type": "string"}]))]);
    let vm = vm(&fake).await;
    assert_eq!(vm.find_balloon_path().await.expect("qom-list"), None);
    assert!(matches!(
        vm.guest_stats().await,
        Err(QmpError::NoDevice { .. })
    ));
}

#[tokio::test]
async fn virtio_mem_resize_targets_the_device() {
    let fake = fake_vm();
    let vm = vm(&fake).await;
    assert!(vm.query_memory_devices().await.expect("devices").is_empty());
    vm.set_virtio_mem_requested("vm0", Bytes::mib(256))
        .await
        .expect("resize");
    assert_eq!(
        sent(&fake, "qom-set"),
        vec![
            json!({"path": "/machine/peripheral/vm0", "property": "requested-size",
                    "value": 268435456})
        ]
    );
    assert!(matches!(
        vm.set_virtio_mem_requested("../balloon0", Bytes::mib(1))
            .await,
        Err(QmpError::InvalidArgument { .. })
    ));
}

#[tokio::test]
async fn status_and_pid() {
    let fake = fake_vm();
    let vm = vm(&fake).await;
    let st = vm.query_status().await.expect("status");
    assert_eq!(st.status, RunState::Prelaunch);
    assert!(!st.running);
    // The fake server runs in this process, so the peer is us.
    assert_eq!(vm.pid(), Some(std::process::id()));
    assert!(vm.query_rss().expect("rss") > Bytes::ZERO);
}

#[tokio::test]
async fn migration_commands_go_out_as_qmp_names() {
    let fake = fake_vm();
    let vm = vm(&fake).await;
    vm.migrate_set_capabilities(&[
        (MigrationCapability::PostcopyRam, true),
        (MigrationCapability::Events, true),
        (MigrationCapability::Other("x-new".into()), false),
    ])
    .await
    .expect("caps");
    assert_eq!(
        sent(&fake, "migrate-set-capabilities"),
        vec![json!({"capabilities": [
            {"capability": "postcopy-ram", "state": true},
            {"capability": "events", "state": true},
            {"capability": "x-new", "state": false}]})]
    );
    vm.migrate_set_parameters(&MigrationParameters {
        downtime_limit_ms: Some(300),
        ..Default::default()
    })
    .await
    .expect("params");
    assert_eq!(
        sent(&fake, "migrate-set-parameters"),
        vec![json!({"downtime-limit": 300})]
    );
    vm.migrate("unix:/tmp/x.sock").await.expect("migrate");
    assert_eq!(
        sent(&fake, "migrate"),
        vec![json!({"uri": "unix:/tmp/x.sock"})]
    );
    assert_eq!(
        vm.query_migrate().await.expect("query").status,
        MigrationStatus::None
    );
    let e = vm.migrate_start_postcopy().await.expect_err("refused");
    assert_eq!(e.command_class(), Some("GenericError"));
    vm.migrate_cancel().await.expect("cancel");
    vm.calc_dirty_rate(1).await.expect("calc");
    assert_eq!(
        sent(&fake, "calc-dirty-rate"),
        vec![json!({"calc-time": 1})]
    );
    assert_eq!(
        vm.query_dirty_rate().await.expect("dirty").status,
        DirtyRateStatus::Measuring
    );
}

#[tokio::test]
async fn wrong_reply_shape_is_protocol() {
    let fake = FakeQmp::qemu(|cmd| vec![ok(cmd, json!({"actual": "lots"}))]);
    let vm = vm(&fake).await;
    let e = vm.query_balloon().await.expect_err("bad shape");
    assert!(matches!(e, QmpError::Protocol { .. }), "{e:?}");
    assert!(e.to_string().contains("actual"), "{e}");
}

/// A guest that ejects `nv0` two `qom-list`s after `device_del`, as an ACPI hot-plug guest
/// does some time after the request.
#[tokio::test]
async fn an_unplugged_device_is_waited_for_until_the_guest_let_go() {
    let mut lists_after_del: Option<u32> = None;
    let fake = FakeQmp::qemu(move |cmd| match cmd["execute"].as_str().unwrap_or("") {
        "device_del" => {
            lists_after_del = Some(0);
            vec![ok(cmd, json!({}))]
        }
        "qom-list" => {
            let gone = lists_after_del.is_some_and(|n| n >= 2);
            if let Some(n) = &mut lists_after_del {
                *n += 1;
            }
            let mut props = vec![json!({"name": "type", "type": "string"})];
            if !gone {
                props.push(json!({"name": "nv0", "type": "child<nvme>"}));
            }
            vec![ok(cmd, Value::Array(props))]
        }
        "device_add" => vec![ok(cmd, json!({}))],
        _ => vec![err(cmd, "CommandNotFound", "no")],
    });
    let vm = vm(&fake).await;
    assert!(vm.has_device("nv0").await.expect("list"));
    assert!(!vm.has_device("type").await.expect("list"), "a property");
    vm.device_del("nv0").await.expect("del");
    assert_eq!(sent(&fake, "device_del"), vec![json!({"id": "nv0"})]);
    assert!(
        vm.wait_device_gone("nv0", Duration::from_secs(5))
            .await
            .expect("wait")
    );
    assert!(matches!(
        vm.device_del("../x").await,
        Err(QmpError::InvalidArgument { .. })
    ));
    let step = PlugCommand::from_value(
        &json!({"execute": "device_add", "arguments": {"driver": "nvme", "id": "nv0"}}),
    )
    .expect("step");
    vm.plug(&step).await.expect("plug");
    assert_eq!(
        sent(&fake, "device_add"),
        vec![json!({"driver": "nvme", "id": "nv0"})]
    );
}

#[tokio::test]
async fn a_device_the_guest_keeps_is_reported_after_the_timeout() {
    let fake = FakeQmp::qemu(|cmd| match cmd["execute"].as_str().unwrap_or("") {
        "qom-list" => vec![ok(cmd, json!([{"name": "nv0", "type": "child<nvme>"}]))],
        _ => vec![ok(cmd, json!({}))],
    });
    let vm = vm(&fake).await;
    vm.device_del("nv0").await.expect("del");
    assert!(
        !vm.wait_device_gone("nv0", Duration::from_millis(300))
            .await
            .expect("wait")
    );
}
