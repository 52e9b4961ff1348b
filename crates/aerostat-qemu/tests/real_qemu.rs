//! Against a real QEMU: no guest kernel, paused with `-S` (or running firmware only), so each
//! test takes about a second. Skips with a clear line when `qemu-system-x86_64` is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aerostat_core::{Bytes, GuestStats};
use aerostat_qemu::backend::{
    DirtyRateStatus, MigrationCapability, MigrationParameters, MigrationStatus, RunState,
};
use aerostat_qemu::{QemuVm, QmpOptions, VmEvent};

const QEMU: &str = "qemu-system-x86_64";

fn qemu_installed() -> bool {
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIP: {QEMU} is not installed; real-QEMU test not run");
    }
    found
}

/// A QEMU process in its own temp dir; `Drop` kills it by pid and prints its log if the test
/// failed.
struct TestVm {
    child: Child,
    dir: tempfile::TempDir,
    qmp: PathBuf,
}

impl TestVm {
    fn start(extra: &[&str]) -> TestVm {
        let dir = tempfile::tempdir().expect("temp dir");
        let qmp = dir.path().join("qmp.sock");
        let log = std::fs::File::create(dir.path().join("qemu.log")).expect("log file");
        let mut args: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-display",
            "none",
            "-vga",
            "none",
            "-qmp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("unix:{},server=on,wait=off", qmp.display()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn qemu");
        TestVm { child, dir, qmp }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn connect(&mut self) -> QemuVm {
        let opts = QmpOptions {
            handshake_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(10),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("qemu exited early with {status}");
            }
            if self.qmp.exists() {
                match QemuVm::connect_with(&self.qmp, opts).await {
                    Ok(vm) => return vm,
                    Err(e) if Instant::now() > deadline => panic!("QMP connect: {e}"),
                    Err(_) => {}
                }
            }
            assert!(Instant::now() < deadline, "QMP socket never appeared");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default();
            eprintln!("--- qemu log ({}) ---\n{log}", self.pid());
        }
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn balloon_and_guest_stats_without_a_guest() {
    if !qemu_installed() {
        return;
    }
    let mut qemu = TestVm::start(&[
        "-m",
        "512M",
        "-S",
        "-device",
        "virtio-balloon-pci,id=balloon0",
    ]);
    let vm = qemu.connect().await;

    let g = vm.client().greeting();
    println!("QEMU {} ({})", g.version, g.package);
    assert_eq!(
        vm.pid(),
        Some(qemu.pid()),
        "SO_PEERCRED names the QEMU we started"
    );
    let rss = vm.query_rss().expect("rss");
    assert!(rss > Bytes::mib(1), "QEMU RSS {rss}");

    let status = vm.query_status().await.expect("status");
    assert_eq!(status.status, RunState::Prelaunch);
    assert!(!status.running);

    assert_eq!(vm.query_balloon().await.expect("actual"), Bytes::mib(512));
    assert_eq!(
        vm.find_balloon_path().await.expect("qom-list").as_deref(),
        Some("/machine/peripheral/balloon0")
    );
    vm.enable_stats_polling(2).await.expect("polling");
    // No guest driver: QEMU reports every stat as "unsupported" and last-update 0.
    assert_eq!(
        vm.guest_stats().await.expect("stats"),
        GuestStats::default()
    );

    // QEMU accepts a target even without a driver; `actual` only moves when a guest acts.
    vm.set_balloon(Bytes::mib(400)).await.expect("balloon");
    assert_eq!(vm.query_balloon().await.expect("actual"), Bytes::mib(512));
}

/// QEMU says which devices block a migration before one is tried: ivshmem in peer mode here
/// (a VFIO device without migration support registers a blocker the same way); a VM without
/// one has none.
#[tokio::test]
async fn migration_blockers_are_read_before_any_migration() {
    if !qemu_installed() {
        return;
    }
    let mut plain = TestVm::start(&["-m", "128M", "-S"]);
    let vm = plain.connect().await;
    assert_eq!(
        vm.migration_blockers().await.expect("query-migrate"),
        Vec::<String>::new()
    );

    let shm = tempfile::tempdir().expect("temp dir");
    let backend = format!(
        "memory-backend-file,id=hm,size=4M,share=on,mem-path={}",
        shm.path().join("ivshmem").display()
    );
    let mut blocked = TestVm::start(&[
        "-m",
        "128M",
        "-S",
        "-object",
        &backend,
        "-device",
        "ivshmem-plain,memdev=hm,id=iv0",
    ]);
    let vm = blocked.connect().await;
    let reasons = vm.migration_blockers().await.expect("query-migrate");
    println!("blocked-reasons: {reasons:?}");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("ivshmem"), "{reasons:?}");
}

#[tokio::test]
async fn virtio_mem_and_migration_primitives() {
    if !qemu_installed() {
        return;
    }
    let mut qemu = TestVm::start(&[
        "-m",
        "512M,maxmem=2G",
        "-S",
        "-object",
        "memory-backend-ram,id=vmem0,size=1G",
        "-device",
        "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=128M",
    ]);
    let vm = qemu.connect().await;

    // virtio-mem: QEMU records the request; nothing is plugged without a guest driver.
    let devs = vm.query_memory_devices().await.expect("devices");
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].id.as_deref(), Some("vm0"));
    assert_eq!(devs[0].requested_size, Bytes::mib(128));
    assert_eq!(devs[0].max_size, Bytes::gib(1));
    assert_eq!(devs[0].size, Bytes::ZERO);
    assert!(devs[0].block_size >= Bytes::mib(2));
    vm.set_virtio_mem_requested("vm0", Bytes::mib(256))
        .await
        .expect("resize");
    let devs = vm.query_memory_devices().await.expect("devices");
    assert_eq!(devs[0].requested_size, Bytes::mib(256));
    let e = vm
        .set_virtio_mem_requested("vm0", Bytes::mib(256) + Bytes(4096))
        .await
        .expect_err("unaligned size is refused by QEMU");
    assert!(e.command_class().is_some(), "{e}");

    // No balloon device here.
    assert_eq!(vm.find_balloon_path().await.expect("qom-list"), None);

    // Migration to a sink: before, nothing; after, completed with RAM counts.
    assert_eq!(
        vm.query_migrate().await.expect("query").status,
        MigrationStatus::None
    );
    vm.migrate_set_capabilities(&[(MigrationCapability::Events, true)])
        .await
        .expect("caps");
    vm.migrate_set_parameters(&MigrationParameters {
        downtime_limit_ms: Some(300),
        max_bandwidth_bytes_per_sec: Some(1 << 30),
        ..Default::default()
    })
    .await
    .expect("params");
    vm.client().execute("cont", None).await.expect("cont");
    vm.migrate("exec:cat > /dev/null").await.expect("migrate");
    let info = wait_until("migration to finish", Duration::from_secs(30), || async {
        let info = vm.query_migrate().await.expect("query");
        info.status.is_finished().then_some(info)
    })
    .await;
    assert_eq!(info.status, MigrationStatus::Completed, "{info:?}");
    let ram = info.ram.expect("ram stats");
    assert!(ram.total >= Bytes::mib(512), "{ram:?}");
    assert_eq!(ram.remaining, Bytes::ZERO);
    assert!(ram.dirty_sync_count >= 1);
    assert!(info.downtime_ms.is_some());

    let events: Vec<VmEvent> = vm
        .client()
        .drain_events()
        .iter()
        .map(VmEvent::from)
        .collect();
    println!("events: {events:?}");
    assert!(events.contains(&VmEvent::Resume));
    assert!(events.contains(&VmEvent::MigrationPass { pass: 1 }));
    assert!(events.contains(&VmEvent::Migration {
        status: MigrationStatus::Completed
    }));
    assert_eq!(
        vm.query_status().await.expect("status").status,
        RunState::Postmigrate
    );

    // Post-copy was not enabled: QEMU refuses, with its own error class.
    let e = vm.migrate_start_postcopy().await.expect_err("no postcopy");
    assert_eq!(e.command_class(), Some("GenericError"));
    vm.migrate_cancel().await.expect("cancel is a no-op now");

    vm.calc_dirty_rate(1).await.expect("calc-dirty-rate");
    let rate = wait_until("dirty rate", Duration::from_secs(10), || async {
        let d = vm.query_dirty_rate().await.expect("query-dirty-rate");
        (d.status == DirtyRateStatus::Measured).then_some(d)
    })
    .await;
    assert!(rate.dirty_rate_mib_per_sec.is_some(), "{rate:?}");
}
