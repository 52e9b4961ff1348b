//! `aerostat migrate` against real QEMU (issue: "Live migration that always lands").
//!
//! Two local QEMU processes on loopback: the destination is the same command line plus
//! `-incoming tcp:127.0.0.1:PORT`. `aerostat migrate` talks to each VM over its second QMP
//! socket (`VmSpec::daemon_dir`), so the test keeps its own socket for checks while a migration
//! runs. Needs `qemu-system-x86_64` and the test guest (`bash guest/build.sh`); without them
//! each test prints `SKIP:` and passes. Serialised with the other real-VM tests by
//! `common::serial_lock` (a mutex plus a file lock). `--nocapture` shows the reports and the
//! predicted-vs-measured lines recorded in docs/migration.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BUDGET: &str = "60s";
const CAPPED: &str = "32MiB/s";

struct Pair {
    src: TestVm,
    dst: TestVm,
    port: u16,
    qmp_dir: tempfile::TempDir,
}

impl Pair {
    fn src_qmp(&self) -> PathBuf {
        self.qmp_dir.path().join(format!("{}.qmp", self.src.name))
    }
    fn dst_qmp(&self) -> PathBuf {
        self.qmp_dir.path().join(format!("{}.qmp", self.dst.name))
    }
}

fn qmp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("aerostat-mig-qmp-")
        .tempdir()
        .expect("temp dir")
}

/// A destination for `src`: same command line plus `-incoming`.
fn destination(files: &GuestFiles, src: &TestVm, dir: &Path, n: u32) -> (TestVm, u16) {
    destination_with(files, src, dir, n, &[])
}

/// A destination for `src` with more QEMU arguments (what the source's devices need there).
fn destination_with(
    files: &GuestFiles,
    src: &TestVm,
    dir: &Path,
    n: u32,
    args: &[&str],
) -> (TestVm, u16) {
    let port = free_port();
    let spec = VmSpec::new(&format!("{}-dst{n}", src.name), src.mem_mib)
        .daemon_dir(dir)
        .swap_disk_of(src)
        .qemu_args(args)
        .incoming(&format!("tcp:127.0.0.1:{port}"));
    let dst = TestVm::spawn(files, &spec);
    let qmp = dst.qmp.clone();
    wait_until(
        Duration::from_secs(30),
        "the destination's QMP socket",
        || qmp.exists(),
    );
    (dst, port)
}

fn pair(files: &GuestFiles, name: &str, mem_mib: u64) -> Pair {
    let qmp_dir = qmp_dir();
    let src = TestVm::start(
        files,
        &VmSpec::new(name, mem_mib).daemon_dir(qmp_dir.path()),
    );
    let (dst, port) = destination(files, &src, qmp_dir.path(), 1);
    Pair {
        src,
        dst,
        port,
        qmp_dir,
    }
}

fn start_dirtying(vm: &TestVm, mib: u64) {
    vm.run_ok(&format!("memhog {mib} --dirty >/tmp/memhog.log 2>&1 &"));
    let (rc, out) = vm.run_timeout(
        "while ! grep -q holding /tmp/memhog.log; do sleep 0.5; done; cat /tmp/memhog.log",
        Duration::from_secs(120),
    );
    assert_eq!(rc, 0, "memhog did not start: {out}");
}

fn aerostat_migrate_cmd(
    src_qmp: &Path,
    port: u16,
    dst_qmp: Option<&Path>,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aerostat"));
    cmd.arg("migrate")
        .arg(src_qmp)
        .arg("--to")
        .arg(format!("tcp:127.0.0.1:{port}"))
        .arg("--json")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dst_qmp {
        cmd.arg("--dest-qmp").arg(d);
    }
    cmd
}

/// Runs `aerostat migrate --json`; returns (exit code, report, wall time).
fn aerostat_migrate(
    src_qmp: &Path,
    port: u16,
    dst_qmp: Option<&Path>,
    extra: &[&str],
) -> (i32, Value, Duration) {
    let t0 = Instant::now();
    let out = aerostat_migrate_cmd(src_qmp, port, dst_qmp, extra)
        .output()
        .expect("run aerostat migrate");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (out.status.code().unwrap_or(-1), report, took)
}

fn u(report: &Value, key: &str) -> Option<u64> {
    report[key].as_u64()
}

/// One line for docs/migration.md.
fn summary(label: &str, rc: i32, r: &Value) -> String {
    let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{} MiB", b >> 20));
    let msf = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
    format!(
        "| {label} | {} (rc {rc}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r["outcome"].as_str().unwrap_or("?"),
        r["strategy"].as_str().unwrap_or("-"),
        msf(u(r, "predicted_total_ms")),
        msf(u(r, "total_time_ms")),
        prediction_error(r).map_or("-".into(), |e| format!("{e:+.0} %")),
        msf(u(r, "downtime_ms")),
        msf(u(r, "paused_ms")),
        msf(u(r, "postcopy_blocktime_ms")),
        mib(u(r, "bytes_sent")),
        u(r, "passes").map_or("-".into(), |p| p.to_string()),
        u(r, "max_cpu_throttle").map_or("-".into(), |t| format!("{t} %")),
    )
}

/// (predicted − measured) / measured, percent.
fn prediction_error(r: &Value) -> Option<f64> {
    let (p, m) = (u(r, "predicted_total_ms")?, u(r, "total_time_ms")?);
    (m > 0).then(|| (p as f64 - m as f64) * 100.0 / m as f64)
}

const TABLE_HEAD: &str = "| run | outcome | strategy | predicted total | total | error | downtime | paused (STOP→RESUME) | post-copy blocktime | sent | syncs | max throttle |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

/// How far past its downtime limit a converged pre-copy may pause the guest here. QEMU's
/// limit is a target it plans for from its bandwidth estimate, not a bound: under TCG on two
/// busy cores the last stop-and-copy overran 300 ms by 18 ms in CI (318 ms, QEMU's own
/// account). What these tests must catch is a pause of the whole remaining memory — seconds
/// for 512 MiB at 128 MiB/s — so the bound is twice the limit; the exact pauses go to
/// docs/migration.md's table, not into a timing assertion.
fn pause_bound(limit_ms: u64) -> u64 {
    2 * limit_ms
}

/// A completed migration kept the guest's pause near the limit, by QEMU's account and by
/// the events' (STOP on the source to RESUME on the destination).
fn assert_pause_within(r: &Value, limit_ms: u64) {
    let bound = pause_bound(limit_ms);
    let downtime = u(r, "downtime_ms").expect("downtime");
    assert!(downtime <= bound, "downtime {downtime} ms: {r:#}");
    let paused = u(r, "paused_ms").expect("STOP→RESUME measured with --dest-qmp");
    assert!(paused <= bound, "paused {paused} ms: {r:#}");
}

/// A post-copy switch paused the guest near the limit, by the events (STOP on the source to
/// RESUME on the destination): the guest's real pause. QEMU's own `downtime` for a post-copy
/// run is not asserted: it usually matches (2-10 ms here), but in one CI run (session 15) the
/// second post-copy hop reported 7,768 ms while STOP→RESUME was 10 ms and the guest was
/// already running on the destination (post-copy blocktime 7,055 ms): QEMU's figure was then
/// not the guest's pause.
fn assert_postcopy_pause_within(r: &Value, limit_ms: u64) {
    let bound = pause_bound(limit_ms);
    let paused = u(r, "paused_ms").expect("STOP→RESUME measured with --dest-qmp");
    assert!(paused <= bound, "paused {paused} ms: {r:#}");
}

fn print_report(label: &str, rc: i32, r: &Value) {
    println!("--- {label}: rc {rc} ---");
    println!("plan: {}", r["plan"]["reason"].as_str().unwrap_or(""));
    for s in r["switches"].as_array().into_iter().flatten() {
        println!(
            "switch at {} ms: {} — {}",
            s["at_ms"],
            s["action"].as_str().unwrap_or(""),
            s["reason"].as_str().unwrap_or("")
        );
    }
    for l in r["pass_log"].as_array().into_iter().flatten() {
        println!(
            "pass: t+{} ms sync {} sent {} MiB remaining {} MiB dirty {} MiB/s {:.0} Mbit/s: {}",
            l["at_ms"],
            l["dirty_sync_count"],
            l["transferred"].as_u64().unwrap_or(0) >> 20,
            l["remaining"].as_u64().unwrap_or(0) >> 20,
            l["dirty_rate"].as_u64().unwrap_or(0) >> 20,
            l["mbps"].as_f64().unwrap_or(0.0),
            l["reason"].as_str().unwrap_or("")
        );
    }
    for n in r["notes"].as_array().into_iter().flatten() {
        println!("note: {}", n.as_str().unwrap_or(""));
    }
    println!("{}", summary(label, rc, r));
}

fn assert_guest_alive(vm: &TestVm, expect_memhog: bool) {
    let out = vm.run_ok("echo alive-$(cat /proc/uptime | cut -d' ' -f1); pidof memhog || true");
    assert!(out.contains("alive-"), "{}: {out}", vm.name);
    if expect_memhog {
        let pid = out.lines().last().unwrap_or("").trim();
        assert!(
            pid.parse::<u32>().is_ok(),
            "{}: memhog is gone: {out}",
            vm.name
        );
    }
}

fn run_state(vm: &TestVm) -> String {
    vm.qmp("query-status", None)["status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

#[test]
fn idle_guest_migrates_with_precopy() {
    let _serial = serial_lock();
    let Some(files) = prerequisites("idle_guest_migrates_with_precopy") else {
        return;
    };
    let mut p = pair(&files, "idle", 512);
    let (rc, r, took) = aerostat_migrate(
        &p.src_qmp(),
        p.port,
        Some(&p.dst_qmp()),
        &["--max-time", BUDGET],
    );
    print_report("idle 512 MiB, defaults", rc, &r);
    println!("wall (incl. 1 s dirty-rate probe): {took:?}");
    assert_eq!(rc, 0, "{r:#}");
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["strategy"], "pre-copy");
    assert!(r["switches"].as_array().expect("switches").is_empty());
    assert_pause_within(&r, 300);
    println!("{TABLE_HEAD}\n{}", summary("idle, pre-copy", rc, &r));
    assert_eq!(r["destination_status"], "running");
    assert_guest_alive(&p.dst, false);
    assert_eq!(run_state(&p.src), "postmigrate");
    p.src.kill();
}

/// `--max-bytes` on a real migration: pre-copy that cannot switch to post-copy (no
/// destination QMP) is cancelled once QEMU has transferred the traffic budget; the source
/// keeps running.
#[test]
fn precopy_is_cancelled_once_it_has_sent_the_traffic_budget() {
    const BUDGET_MIB: u64 = 64;
    let _serial = serial_lock();
    let Some(files) = prerequisites("precopy_is_cancelled_once_it_has_sent_the_traffic_budget")
    else {
        return;
    };
    let mut p = pair(&files, "metered", 512);
    let budget = format!("{BUDGET_MIB}MiB");
    let args = [
        "--bandwidth",
        CAPPED,
        "--max-time",
        BUDGET,
        "--max-bytes",
        budget.as_str(),
    ];
    let (rc, r, took) = aerostat_migrate(&p.src_qmp(), p.port, None, &args);
    print_report("idle 512 MiB, 64 MiB traffic budget, pre-copy only", rc, &r);
    println!("wall: {took:?}");
    assert_ne!(rc, 0, "{r:#}");
    assert_eq!(r["outcome"], "cancelled at the budget", "{r:#}");
    let switches = r["switches"].as_array().expect("switches");
    assert_eq!(switches.len(), 1, "{r:#}");
    assert_eq!(switches[0]["action"], "migrate_cancel");
    let why = switches[0]["reason"].as_str().unwrap_or("");
    assert!(why.starts_with("traffic budget"), "{why}");
    // Polled every 200 ms: a poll's worth past the budget (32 MiB/s), and a second's worth of
    // margin for a QMP reply late on two busy cores.
    let sent = u(&r, "bytes_sent").expect("bytes sent");
    assert!(
        sent >= BUDGET_MIB << 20,
        "cancelled before the budget: {sent}"
    );
    assert!(sent <= (BUDGET_MIB + 32) << 20, "{sent} bytes sent");
    assert_eq!(run_state(&p.src), "running");
    assert_guest_alive(&p.src, false);
    let dst_pid = p.dst.pid();
    wait_until(Duration::from_secs(30), "the destination to exit", || {
        !p.dst.alive()
    });
    println!("destination {dst_pid} exited after the cancel");
    p.src.kill();
}

#[test]
fn rewriting_guest_lands_through_postcopy_where_precopy_does_not() {
    let _serial = serial_lock();
    let Some(files) = prerequisites("rewriting_guest_lands_through_postcopy") else {
        return;
    };
    let mut p = pair(&files, "dirty", 512);
    start_dirtying(&p.src, 256);
    let settings = ["--bandwidth", CAPPED, "--max-time", BUDGET];
    let mut lines = Vec::new();

    // 1. QEMU's default pre-copy, same settings: cancelled at the budget, source keeps going.
    let mut args = settings.to_vec();
    args.extend(["--strategy", "pre-copy"]);
    let (rc, r, _) = aerostat_migrate(&p.src_qmp(), p.port, Some(&p.dst_qmp()), &args);
    print_report("default pre-copy", rc, &r);
    lines.push(summary("QEMU default pre-copy", rc, &r));
    assert_ne!(rc, 0, "{r:#}");
    assert_eq!(r["outcome"], "cancelled at the budget", "{r:#}");
    assert_eq!(run_state(&p.src), "running");
    assert_guest_alive(&p.src, true);
    // The destination exits once the incoming migration is cancelled.
    let dst_pid = p.dst.pid();
    wait_until(Duration::from_secs(30), "the destination to exit", || {
        !p.dst.alive()
    });
    println!("destination {dst_pid} exited after the cancel");

    // 2. Pre-copy with auto-converge, same settings, fresh destination.
    let (dst2, port2) = destination(&files, &p.src, p.qmp_dir.path(), 2);
    let mut args = settings.to_vec();
    args.extend(["--strategy", "auto-converge"]);
    let dst2_qmp = p.qmp_dir.path().join(format!("{}.qmp", dst2.name));
    let (rc, r, _) = aerostat_migrate(&p.src_qmp(), port2, Some(&dst2_qmp), &args);
    print_report("auto-converge", rc, &r);
    lines.push(summary("pre-copy + auto-converge", rc, &r));
    let auto_completed = rc == 0;
    drop(dst2);

    // 3. aerostat's plan. If auto-converge landed, the source is spent: start another.
    let (src, _qmp_dir_keep) = if auto_completed {
        let dir = qmp_dir();
        let src = TestVm::start(&files, &VmSpec::new("dirty2", 512).daemon_dir(dir.path()));
        start_dirtying(&src, 256);
        (Some(src), Some(dir))
    } else {
        (None, None)
    };
    let (src_vm, src_qmp) = match (&src, &_qmp_dir_keep) {
        (Some(s), Some(d)) => (s, d.path().join(format!("{}.qmp", s.name))),
        _ => (&p.src, p.src_qmp()),
    };
    let dir3 = qmp_dir();
    let (dst3, port3) = destination(&files, src_vm, dir3.path(), 3);
    let dst3_qmp = dir3.path().join(format!("{}.qmp", dst3.name));
    let (rc, r, _) = aerostat_migrate(&src_qmp, port3, Some(&dst3_qmp), &settings);
    print_report("aerostat plan", rc, &r);
    lines.push(summary("aerostat plan", rc, &r));
    let landed = |r: &Value| {
        assert_eq!(r["outcome"], "completed", "{r:#}");
        let switches = r["switches"].as_array().expect("switches");
        assert_eq!(switches.len(), 1, "{r:#}");
        assert_eq!(switches[0]["action"], "migrate-start-postcopy");
        assert!(u(r, "total_time_ms").expect("total") <= 60_000, "{r:#}");
        assert_postcopy_pause_within(r, 300);
        assert_eq!(r["destination_status"], "running");
    };
    assert_eq!(rc, 0, "{r:#}");
    landed(&r);
    assert_guest_alive(&dst3, true);
    p.src.kill();

    // 4. Again, from its new host: the guest (still rewriting) moves on to a fourth QEMU.
    let dir4 = qmp_dir();
    let (dst4, port4) = destination(&files, &dst3, dir4.path(), 4);
    let dst4_qmp = dir4.path().join(format!("{}.qmp", dst4.name));
    let (rc, r, _) = aerostat_migrate(&dst3_qmp, port4, Some(&dst4_qmp), &settings);
    print_report("aerostat plan, again from the new host", rc, &r);
    lines.push(summary("aerostat plan, again from the new host", rc, &r));
    println!("{TABLE_HEAD}");
    for l in &lines {
        println!("{l}");
    }
    assert_eq!(rc, 0, "{r:#}");
    landed(&r);
    assert_guest_alive(&dst4, true);
}

#[test]
fn destination_killed_before_the_switch_leaves_the_source_running() {
    let _serial = serial_lock();
    let Some(files) = prerequisites("destination_killed_before_the_switch") else {
        return;
    };
    let mut p = pair(&files, "kill", 512);
    start_dirtying(&p.src, 256);
    let child = aerostat_migrate_cmd(
        &p.src_qmp(),
        p.port,
        Some(&p.dst_qmp()),
        &["--bandwidth", CAPPED, "--max-time", BUDGET],
    )
    .spawn()
    .expect("spawn aerostat migrate");
    // Kill the destination during the first pass (the switch comes only after it).
    let src_qmp = p.src.qmp.clone();
    wait_until(
        Duration::from_secs(60),
        "the first pass to be under way",
        || {
            qmp(&src_qmp, "query-migrate", None)
                .ok()
                .and_then(|v| v["ram"]["transferred"].as_u64())
                .is_some_and(|t| t > 64 * MIB)
        },
    );
    let mig = qmp(&src_qmp, "query-migrate", None).expect("query-migrate");
    assert_eq!(
        mig["ram"]["dirty-sync-count"], 1,
        "still in the first pass: {mig}"
    );
    p.dst.kill();
    let out = child.wait_with_output().expect("aerostat migrate");
    let rc = out.status.code().unwrap_or(-1);
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    print_report("destination killed", rc, &r);
    assert_ne!(rc, 0);
    assert_eq!(r["completed"], false);
    assert!(
        r["switches"].as_array().expect("switches").is_empty(),
        "no post-copy switch towards a dead destination: {r:#}"
    );
    assert_eq!(run_state(&p.src), "running");
    assert_guest_alive(&p.src, true);
}

/// An NVMe controller: QEMU will not migrate one ("non-migratable device"), and the guest
/// ejects it through ACPI hot-plug without a driver bound — a stand-in for a passthrough NIC
/// or GPU, which these machines do not have. Its block node is a `-blockdev` (never deleted
/// with the device), the same on the destination, so the replug is one `device_add`.
const NVME_REPLUG: &str = r#"{"execute": "device_add", "arguments": {"driver": "nvme", "serial": "aero1", "drive": "nvd", "id": "nv0"}}"#;

fn nvme_backend(img: &Path) -> Vec<String> {
    vec![
        "-blockdev".into(),
        format!(
            "driver=file,filename={},node-name=nvf,locking=off",
            img.display()
        ),
        "-blockdev".into(),
        "driver=raw,file=nvf,node-name=nvd".into(),
    ]
}

fn nvme_image(dir: &Path) -> PathBuf {
    let img = dir.join("nvme.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .expect("nvme image");
    img
}

/// Whether the guest sees an NVMe controller (PCI class 0x010802) on its bus.
fn guest_sees_nvme(vm: &TestVm) -> bool {
    vm.run_ok("cat /sys/bus/pci/devices/*/class")
        .lines()
        .any(|l| l.trim() == "0x010802")
}

fn has_device(vm: &TestVm, id: &str) -> bool {
    vm.qmp(
        "qom-list",
        Some(serde_json::json!({"path": "/machine/peripheral"})),
    )
    .as_array()
    .expect("qom-list")
    .iter()
    .any(|p| p["name"] == id)
}

fn blockers(vm: &TestVm) -> Vec<String> {
    vm.qmp("query-migrate", None)["blocked-reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `--unplug` / `--replug` on a real guest whose NVMe controller QEMU will not migrate. First
/// towards a port nobody listens on: the migration fails, and the controller goes back into the
/// source guest. Then towards a real destination: the guest lands there without it, and the
/// controller is plugged into the destination guest.
#[test]
fn a_device_qemu_will_not_migrate_is_unplugged_first_and_plugged_back_where_the_guest_runs() {
    let _serial = serial_lock();
    let Some(files) = prerequisites("a_device_qemu_will_not_migrate_is_unplugged_first") else {
        return;
    };
    let qmp_dir = qmp_dir();
    let img = nvme_image(qmp_dir.path());
    let mut src_args = nvme_backend(&img);
    src_args.extend([
        "-device".to_string(),
        "nvme,serial=aero1,drive=nvd,id=nv0".to_string(),
    ]);
    let args: Vec<&str> = src_args.iter().map(String::as_str).collect();
    let mut src = TestVm::start(
        &files,
        &VmSpec::new("nvme", 512)
            .daemon_dir(qmp_dir.path())
            .qemu_args(&args),
    );
    let src_qmp = qmp_dir.path().join("nvme.qmp");
    let before = blockers(&src);
    assert!(
        before.iter().any(|b| b.contains("nvme")),
        "QEMU names the NVMe controller as a blocker: {before:?}"
    );
    assert!(guest_sees_nvme(&src));
    let handoff = ["--unplug", "nv0", "--replug", NVME_REPLUG];

    // The destination, started with the block node but without the controller: the replug
    // needs its QMP socket, so `aerostat migrate` refuses to unplug without one.
    let port = free_port();
    let dst_args = nvme_backend(&img);
    let dst_args: Vec<&str> = dst_args.iter().map(String::as_str).collect();
    let mut dst = TestVm::spawn(
        &files,
        &VmSpec::new("nvme-dst", 512)
            .daemon_dir(qmp_dir.path())
            .qemu_args(&dst_args)
            .incoming(&format!("tcp:127.0.0.1:{port}")),
    );
    let dst_qmp = qmp_dir.path().join("nvme-dst.qmp");
    wait_until(
        Duration::from_secs(30),
        "the destination's QMP socket",
        || dst_qmp.exists(),
    );
    let mut extra = vec!["--max-time", BUDGET];
    extra.extend(handoff);
    // No destination QMP: refused before anything is unplugged.
    let out = aerostat_migrate_cmd(&src_qmp, port, None, &extra)
        .output()
        .expect("run aerostat migrate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("no destination QMP connection"), "{stderr}");
    assert!(has_device(&src, "nv0"), "nothing unplugged");

    // 1. Nobody listens: the migration fails after the unplug; the device comes back.
    let closed = free_port();
    let (rc, r, took) = aerostat_migrate(&src_qmp, closed, Some(&dst_qmp), &extra);
    print_report("nvme guest, nobody listening", rc, &r);
    println!("wall: {took:?}; devices: {}", r["devices"]);
    assert_ne!(rc, 0, "{r:#}");
    assert_eq!(r["completed"], false);
    let d = &r["devices"];
    assert_eq!(d["unplugged"], serde_json::json!(["nv0"]), "{r:#}");
    assert_eq!(d["replugged_on"], "source", "{r:#}");
    assert_eq!(
        d["replugged"],
        serde_json::json!(["device_add nv0"]),
        "{r:#}"
    );
    assert_eq!(d["replug_errors"], serde_json::json!([]), "{r:#}");
    assert_eq!(run_state(&src), "running");
    assert!(has_device(&src, "nv0"));
    wait_until(
        Duration::from_secs(30),
        "the source guest to see its NVMe controller again",
        || guest_sees_nvme(&src),
    );

    // 2. Now to the real destination.
    let (rc, r, took) = aerostat_migrate(&src_qmp, port, Some(&dst_qmp), &extra);
    print_report("nvme guest, real destination", rc, &r);
    println!("wall: {took:?}; devices: {}", r["devices"]);
    assert_eq!(rc, 0, "{r:#}");
    assert_eq!(r["outcome"], "completed");
    let d = &r["devices"];
    assert_eq!(d["replugged_on"], "destination", "{r:#}");
    assert_eq!(
        d["replugged"],
        serde_json::json!(["device_add nv0"]),
        "{r:#}"
    );
    assert_eq!(d["replug_errors"], serde_json::json!([]), "{r:#}");
    assert!(d["unplug_ms"].as_u64().is_some(), "{r:#}");
    assert_eq!(run_state(&src), "postmigrate");
    assert_eq!(run_state(&dst), "running");
    assert!(has_device(&dst, "nv0"));
    assert!(
        blockers(&dst).iter().any(|b| b.contains("nvme")),
        "the destination has the controller, and its blocker, again"
    );
    wait_until(
        Duration::from_secs(30),
        "the destination guest to see the NVMe controller",
        || guest_sees_nvme(&dst),
    );
    assert_guest_alive(&dst, false);
    dst.kill();
    src.kill();
}

/// A blocker nobody listed to unplug: after unplugging what was listed QEMU would still refuse,
/// so no migration starts and the unplugged device goes back.
#[test]
fn a_blocker_left_after_the_unplug_stops_the_migration_before_it_starts() {
    let _serial = serial_lock();
    let Some(files) = prerequisites("a_blocker_left_after_the_unplug") else {
        return;
    };
    let qmp_dir = qmp_dir();
    let img = nvme_image(qmp_dir.path());
    let shm = qmp_dir.path().join("ivshmem");
    let mut args = nvme_backend(&img);
    args.extend([
        "-device".to_string(),
        "nvme,serial=aero1,drive=nvd,id=nv0".to_string(),
        "-object".to_string(),
        format!(
            "memory-backend-file,id=hm,size=1M,share=on,mem-path={}",
            shm.display()
        ),
        // Peer mode (the default) registers a migration blocker.
        "-device".to_string(),
        "ivshmem-plain,memdev=hm,id=iv0".to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut src = TestVm::start(
        &files,
        &VmSpec::new("twoblock", 512)
            .daemon_dir(qmp_dir.path())
            .qemu_args(&args),
    );
    let src_qmp = qmp_dir.path().join("twoblock.qmp");
    assert_eq!(blockers(&src).len(), 2, "{:?}", blockers(&src));
    // A destination that waits: had a migration started, it would land there.
    let port = free_port();
    let mut dst = TestVm::spawn(
        &files,
        &VmSpec::new("twoblock-dst", 512)
            .daemon_dir(qmp_dir.path())
            .incoming(&format!("tcp:127.0.0.1:{port}")),
    );
    let dst_qmp = qmp_dir.path().join("twoblock-dst.qmp");
    wait_until(
        Duration::from_secs(30),
        "the destination's QMP socket",
        || dst_qmp.exists(),
    );
    let out = aerostat_migrate_cmd(
        &src_qmp,
        port,
        Some(&dst_qmp),
        &["--unplug", "nv0", "--replug", NVME_REPLUG],
    )
    .output()
    .expect("run aerostat migrate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("exit {:?}; stderr: {stderr}", out.status.code());
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("still blocks") && stderr.contains("ivshmem"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plugged back on the source: device_add nv0"),
        "{stderr}"
    );
    assert_eq!(
        src.qmp("query-migrate", None).get("status"),
        None,
        "no migration was started"
    );
    assert_eq!(run_state(&src), "running");
    assert!(has_device(&src, "nv0"));
    wait_until(
        Duration::from_secs(30),
        "the guest to see its NVMe controller again",
        || guest_sees_nvme(&src),
    );
    assert_eq!(run_state(&dst), "inmigrate", "the destination still waits");
    dst.kill();
    src.kill();
}

/// The escape tests' host: a 1 GiB memory cgroup holding two 512 MiB guests `a` and `b`
/// (with a swap disk of `swap_mib` each, swapped on, if given) that the daemon finds in
/// `WORK/qmp`, and a migration destination ready for each (another host: outside the cgroup).
struct EscapeHost {
    cg: TestCgroup,
    work: tempfile::TempDir,
    vms: Vec<TestVm>,
    dests: Vec<TestVm>,
}

impl EscapeHost {
    /// `None` after a `SKIP:` line when QEMU, the guest or a cgroup is missing.
    fn start(test: &str, swap_mib: Option<u64>) -> Option<EscapeHost> {
        EscapeHost::start_with(test, swap_mib, &[], &[])
    }

    /// With more QEMU arguments for `b`, and for `b`'s destination.
    fn start_with(
        test: &str,
        swap_mib: Option<u64>,
        b_args: &[&str],
        b_dest_args: &[&str],
    ) -> Option<EscapeHost> {
        let files = prerequisites(test)?;
        let cg = TestCgroup::create(test, aerostat_core::Bytes::mib(1024))?;
        let work = tempfile::tempdir().expect("work dir");
        let qmp_dir = work.path().join("qmp");
        let dest_dir = work.path().join("dest");
        std::fs::create_dir(&qmp_dir).expect("qmp dir");
        std::fs::create_dir(&dest_dir).expect("dest dir");
        let specs: Vec<VmSpec> = ["a", "b"]
            .iter()
            .map(|n| {
                let spec = VmSpec::new(n, 512)
                    .daemon_dir(&qmp_dir)
                    .in_cgroup(cg.path())
                    .qemu_args(if *n == "b" { b_args } else { &[] });
                match swap_mib {
                    Some(mib) => spec.swap_disk(mib),
                    None => spec,
                }
            })
            .collect();
        let vms = start_all(&files, &specs);
        if swap_mib.is_some() {
            for vm in &vms {
                vm.run_ok("mkswap /dev/vda >/dev/null && swapon /dev/vda");
            }
        }
        let dests = escape_destinations(&files, &vms, work.path(), &dest_dir, b_dest_args);
        Some(EscapeHost {
            cg,
            work,
            vms,
            dests,
        })
    }
}

/// A migration destination ready for each guest, and the `prepare` hook that prints the one
/// prepared for the guest it is asked about.
fn escape_destinations(
    files: &GuestFiles,
    vms: &[TestVm],
    work: &Path,
    dest_dir: &Path,
    b_dest_args: &[&str],
) -> Vec<TestVm> {
    let mut dests = Vec::new();
    for vm in vms {
        let args = if vm.name == "b" { b_dest_args } else { &[] };
        let (dst, port) = destination_with(files, vm, dest_dir, 1, args);
        std::fs::write(
            work.join(format!("{}.dest", vm.name)),
            format!(
                "preparing {}\nuri=tcp:127.0.0.1:{port}\ndest_qmp={}\n",
                vm.name,
                dest_dir.join(format!("{}.qmp", dst.name)).display()
            ),
        )
        .expect("write destination file");
        dests.push(dst);
    }
    std::fs::write(
        work.join("prepare.sh"),
        format!(
            "#!/bin/sh\nset -e\ntest -n \"$AEROSTAT_VM_MEMORY\"\ncat {}/\"$AEROSTAT_VM\".dest\n",
            work.display()
        ),
    )
    .expect("write hook");
    dests
}

/// The daemon's config for the escape tests: the cgroup is the host (64 MiB reserve), the
/// guests' floor is `min` with 96 MiB overhead each, `a` outranks `b`, and the escape moves
/// a guest through the hook `escape_destinations` wrote after 5 s of pressure.
fn escape_config(work: &Path, cg: &Path, min: &str) -> String {
    format!(
        "[host]\nreserve = \"64MiB\"\ncgroup = \"{}\"\n\
         [policy]\nname = \"aerostat\"\ninterval = \"1s\"\n\
         [qemu]\nqmp_glob = \"{}/*.qmp\"\nstats_interval = \"1s\"\n\
         [vm_defaults]\nmin = \"{min}\"\noverhead = \"96MiB\"\n\
         [vm.a]\npriority = 2.0\n\
         [migration]\nescape = true\nprepare = [\"/bin/sh\", \"{}\"]\ngrace = \"5s\"\n\
         bandwidth = \"128MiB/s\"\nmax_time = \"60s\"\n",
        cg.display(),
        work.join("qmp").display(),
        work.join("prepare.sh").display()
    )
}

/// Waits for the daemon's first escape to finish: (its `escape` line, its `escape_finished`
/// line), printed with the time since `t0`.
fn wait_for_escape(daemon: &Daemon, t0: Instant, timeout: Duration) -> (Value, Value) {
    wait_until(timeout, "the escape to finish", || {
        !escape_lines(daemon, "escape_finished").is_empty()
    });
    let chosen = escape_lines(daemon, "escape").remove(0);
    let done = escape_lines(daemon, "escape_finished").remove(0);
    println!(
        "escape: {chosen:#}\nfinished after {:.1} s: {done:#}",
        t0.elapsed().as_secs_f64()
    );
    (chosen, done)
}

/// `b` left: its source QEMU exited (its memory left the host), and it runs on its
/// destination (with its memhog, if it had one).
fn assert_b_moved(vms: &mut [TestVm], dests: &[TestVm], expect_memhog: bool) {
    wait_until(
        Duration::from_secs(30),
        "the source QEMU of b to exit",
        || !vms[1].alive(),
    );
    assert_eq!(dests[1].qmp("query-status", None)["status"], "running");
    assert_guest_alive(&dests[1], expect_memhog);
}

/// The daemon's decision lines of one event kind (`escape`, `escape_finished`).
fn escape_lines(d: &Daemon, event: &str) -> Vec<Value> {
    d.decisions()
        .into_iter()
        .filter(|l| l["event"] == event)
        .collect()
}

/// (d) The daemon's escape: two guests in a memory cgroup standing for a host that their
/// floors no longer fit. `--dry-run` names the guest it would move and why, and moves nothing;
/// then the daemon moves that guest (the lower-priority one) to a destination its `prepare`
/// hook names, quits the source, and the floors of the guest that stays fit again.
#[test]
fn daemon_escape_moves_a_guest_off_a_host_its_floors_no_longer_fit() {
    let _serial = serial_lock();
    let Some(EscapeHost {
        cg,
        work,
        mut vms,
        mut dests,
    }) = EscapeHost::start("escape", None)
    else {
        return;
    };
    // Floors: 2 × (448 MiB min + 96 MiB overhead) = 1088 MiB; the host gives 1024 − 64 = 960.
    let config = escape_config(work.path(), cg.path(), "448MiB");

    // Dry run: the choice and its reason, nothing moves.
    let mut dry = Daemon::start_with(work.path(), 1, &config, &["--dry-run"]);
    wait_until(Duration::from_secs(60), "a dry-run escape line", || {
        !escape_lines(&dry, "escape").is_empty()
    });
    let line = escape_lines(&dry, "escape").remove(0);
    println!("dry run: {line:#}");
    assert_eq!(line["dry_run"], true);
    assert_eq!(line["guest"], "b", "the lower-priority guest: {line:#}");
    let reason = line["reason"].as_str().expect("reason");
    assert!(reason.contains("floors need"), "{reason}");
    assert!(reason.contains("move b"), "{reason}");
    // What the operator sees meanwhile: the alert under the status table, and in /metrics.
    let table = dry.status_table();
    assert!(table.contains("ALERT: floors do not fit"), "{table}");
    let m = parse_prometheus(&dry.metrics()).expect("metrics");
    assert_eq!(
        m.value("aerostat_alert_active", &[("kind", "floors_do_not_fit")]),
        Some(1.0)
    );
    dry.terminate(Duration::from_secs(5));
    assert!(escape_lines(&dry, "escape_finished").is_empty());
    assert_eq!(run_state(&vms[1]), "running", "dry run moved nothing");
    assert_eq!(dests[1].qmp("query-status", None)["status"], "inmigrate");

    // For real.
    let t0 = Instant::now();
    let mut daemon = Daemon::start(work.path(), 2, &config);
    let (chosen, done) = wait_for_escape(&daemon, t0, Duration::from_secs(180));
    assert_eq!(chosen["guest"], "b");
    assert_eq!(done["guest"], "b");
    assert_eq!(done["completed"], true, "{done:#}");
    assert!(
        done["paused_ms"].as_u64().expect("paused") <= pause_bound(300),
        "{done:#}"
    );
    assert_b_moved(&mut vms, &dests, false);
    // The daemon forgets b; a's floor fits; a stays and runs.
    wait_until(
        Duration::from_secs(30),
        "the daemon to drop b and its alert",
        || {
            let st = daemon.status();
            st["vms"].as_array().is_some_and(|v| v.len() == 1)
                && st["alerts"].as_array().is_some_and(Vec::is_empty)
        },
    );
    assert_eq!(run_state(&vms[0]), "running");
    assert_guest_alive(&vms[0], false);
    assert_eq!(cg.host().sample().expect("cgroup").oom_kills, Some(0));
    daemon.terminate(Duration::from_secs(5));
    vms[0].kill();
    for d in &mut dests {
        d.kill();
    }
}

/// The escape's second trigger, on real guests: the floors fit, the working sets do not. Two
/// 512 MiB guests with swap on a 1 GiB cgroup host each keep rewriting 400 MiB; the host gives
/// both 768 MiB, so they swap and ask for memory the host cannot give. After the grace the
/// daemon moves the lower-priority guest away (its swap disk is shared storage, as a
/// destination host would see it), and the guest that stays gets its memory back.
#[test]
fn daemon_escape_moves_a_guest_away_when_the_working_sets_no_longer_fit() {
    let _serial = serial_lock();
    let Some(EscapeHost {
        cg,
        work,
        mut vms,
        mut dests,
    }) = EscapeHost::start("escape_working_sets", Some(512))
    else {
        return;
    };
    // Floors: 2 × (192 MiB min + 96 MiB overhead) = 576 MiB of the 960 the host gives.
    let config = escape_config(work.path(), cg.path(), "192MiB");
    let mut daemon = Daemon::start(work.path(), 1, &config);
    // The idle guests are fitted into the host first: 960 − 2 × 96 = 768 MiB for both.
    wait_until(
        Duration::from_secs(90),
        "the daemon to fit both guests into the host",
        || vms.iter().map(TestVm::balloon_actual).sum::<u64>() <= 768 << 20,
    );
    let t0 = Instant::now();
    for vm in &vms {
        vm.run_ok("memhog 400 --dirty --rate 20 --quiet >/tmp/ws.log 2>&1 &");
    }
    // t0: when the working sets started.
    let (chosen, done) = wait_for_escape(&daemon, t0, Duration::from_secs(240));
    let pressure = chosen["pressure"].as_str().expect("pressure");
    assert!(
        pressure.contains("guests under memory pressure lack"),
        "the working-set trigger, not another: {chosen:#}"
    );
    let log = daemon.log();
    assert!(
        !log.contains("floors do not fit"),
        "the floors fit all along"
    );
    assert!(
        log.contains("memory alert") && log.contains("working sets do not fit"),
        "the operator was told before the escape"
    );
    assert_eq!(chosen["guest"], "b", "the lower-priority guest: {chosen:#}");
    assert_eq!(done["completed"], true, "{done:#}");
    // b runs on the destination, its rewriting process too (its swapped pages came along).
    assert_b_moved(&mut vms, &dests, true);
    // a gets the memory b left: its balloon gives back beyond the 384 MiB it was held to.
    let grown = wait_until(
        Duration::from_secs(60),
        "a's balloon to give back the memory b left",
        || vms[0].balloon_actual() > 448 << 20,
    );
    println!(
        "a: balloon actual {} MiB, {grown:?} after the escape",
        vms[0].balloon_actual() >> 20
    );
    assert_guest_alive(&vms[0], true);
    vms[0].assert_no_oom_kill();
    dests[1].assert_no_oom_kill();
    assert_eq!(cg.host().sample().expect("cgroup").oom_kills, Some(0));
    daemon.terminate(Duration::from_secs(5));
    vms[0].kill();
    for d in &mut dests {
        d.kill();
    }
}

/// The escape with a guest QEMU will not migrate (an NVMe controller in `b`): without a word
/// in the config the escape leaves `b` and would move `a`; with `unplug_for_migration` it
/// unplugs the controller, moves `b` (the lower priority) and plugs the controller into `b`'s
/// destination.
#[test]
fn daemon_escape_unplugs_a_device_qemu_will_not_migrate_and_plugs_it_in_on_the_destination() {
    let _serial = serial_lock();
    let img_dir = tempfile::tempdir().expect("image dir");
    let img = nvme_image(img_dir.path());
    let backend = nvme_backend(&img);
    let mut b_args = backend.clone();
    b_args.extend([
        "-device".to_string(),
        "nvme,serial=aero1,drive=nvd,id=nv0".to_string(),
    ]);
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let dest_args: Vec<&str> = backend.iter().map(String::as_str).collect();
    let Some(EscapeHost {
        cg,
        work,
        mut vms,
        mut dests,
    }) = EscapeHost::start_with("escape_handoff", None, &b_args, &dest_args)
    else {
        return;
    };
    assert!(guest_sees_nvme(&vms[1]));
    let config = escape_config(work.path(), cg.path(), "448MiB");

    // Without the handoff: b cannot move, so the escape would move a.
    let mut dry = Daemon::start_with(work.path(), 1, &config, &["--dry-run"]);
    wait_until(Duration::from_secs(60), "a dry-run escape line", || {
        !escape_lines(&dry, "escape").is_empty()
    });
    let line = escape_lines(&dry, "escape").remove(0);
    println!("dry run without the handoff: {line:#}");
    assert_eq!(line["guest"], "a", "{line:#}");
    let reason = line["reason"].as_str().expect("reason");
    assert!(reason.contains("b cannot migrate"), "{reason}");
    dry.terminate(Duration::from_secs(5));

    let config = format!(
        "{config}[vm.b]\nunplug_for_migration = [\"nv0\"]\nreplug_after_migration = [\n  \
         {{ execute = \"device_add\", arguments = {{ driver = \"nvme\", serial = \"aero1\", \
         drive = \"nvd\", id = \"nv0\" }} }},\n]\n"
    );
    let t0 = Instant::now();
    let mut daemon = Daemon::start(work.path(), 2, &config);
    let (chosen, done) = wait_for_escape(&daemon, t0, Duration::from_secs(180));
    assert_eq!(chosen["guest"], "b", "{chosen:#}");
    assert_eq!(done["completed"], true, "{done:#}");
    let d = &done["devices"];
    assert_eq!(d["unplugged"], serde_json::json!(["nv0"]), "{done:#}");
    assert_eq!(d["replugged_on"], "destination", "{done:#}");
    assert_eq!(d["replug_errors"], serde_json::json!([]), "{done:#}");
    assert_b_moved(&mut vms, &dests, false);
    assert!(has_device(&dests[1], "nv0"));
    wait_until(
        Duration::from_secs(30),
        "b's destination guest to see the NVMe controller",
        || guest_sees_nvme(&dests[1]),
    );
    assert_eq!(run_state(&vms[0]), "running");
    assert_eq!(cg.host().sample().expect("cgroup").oom_kills, Some(0));
    daemon.terminate(Duration::from_secs(5));
    vms[0].kill();
    for d in &mut dests {
        d.kill();
    }
}
