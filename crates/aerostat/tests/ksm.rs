//! `[ksm] control = true` on a real host: two guests booted from the same image, promised more
//! than a small host (a memory cgroup) holds, so oVirt MoM's KSM rule starts KSM; the pages the
//! two guests have in common are merged, and the host gets that memory back.
//!
//! KSM is the machine's, not the cgroup's: the test sets it through the daemon and puts back
//! what it found (`run`, `pages_to_scan`, `sleep_millisecs`) when it ends, even on failure.
//! Needs root, `qemu-system-x86_64` and the test guest; without them it prints `SKIP:` and
//! passes. It holds the real-VM lock for its whole body.

mod common;

use std::time::Duration;

use aerostat_core::Bytes;
use aerostat_host::{KSM_DIR, KsmState, KsmSysfs};
use common::*;

/// Puts KSM's controls back as they were.
struct RestoreKsm {
    sysfs: KsmSysfs,
    before: KsmState,
}

impl Drop for RestoreKsm {
    fn drop(&mut self) {
        let dir = self.sysfs.dir().to_path_buf();
        let b = self.before;
        // Unmerge first: with ksmd stopped, the pages it merged for the test's guests would
        // stay counted in `pages_sharing` after they exit, a KSM saving the next test's host
        // does not have. Writing 2 returns when everything is unmerged.
        let _ = std::fs::write(dir.join("run"), "2");
        let _ = std::fs::write(dir.join("run"), "0");
        let _ = std::fs::write(dir.join("pages_to_scan"), b.pages_to_scan.to_string());
        let _ = std::fs::write(dir.join("sleep_millisecs"), b.sleep_ms.to_string());
        let _ = std::fs::write(dir.join("run"), b.run.to_string());
    }
}

#[test]
fn the_daemon_runs_ksm_when_the_guests_could_use_up_the_host() {
    const TEST: &str = "ksm";
    let _serial = serial_lock();
    let Some(files) = prerequisites(TEST) else {
        return;
    };
    let sysfs = KsmSysfs::new(KSM_DIR);
    let Ok(before) = sysfs.read() else {
        println!("SKIP: {TEST}: no KSM here ({KSM_DIR})");
        return;
    };
    // Two 768 MiB guests and their overheads promised on a 1280 MiB host.
    let Some(cg) = TestCgroup::create(TEST, Bytes::mib(1280)) else {
        return;
    };
    let _restore = RestoreKsm {
        sysfs: sysfs.clone(),
        before,
    };
    // Start from nothing merged (2: unmerge everything, then stop).
    std::fs::write(KSM_DIR.to_string() + "/run", "2").expect("unmerge before the test");
    std::fs::write(KSM_DIR.to_string() + "/run", "0").expect("stop KSM before the test");
    let saved_before = sysfs.read().expect("KSM state").pages_sharing;

    let (work, qmp_dir) = work_dir();
    let specs: Vec<VmSpec> = ["a", "b"]
        .iter()
        .map(|n| {
            VmSpec::new(n, 768)
                .daemon_dir(&qmp_dir)
                .in_cgroup(cg.path())
        })
        .collect();
    let vms = start_all(&files, &specs);
    let config = format!(
        "[host]\nreserve = \"128MiB\"\ncgroup = \"{}\"\n[policy]\nname = \"aerostat\"\ninterval = \"1s\"\n\
         [qemu]\nqmp_glob = \"{}/*.qmp\"\nstats_interval = \"1s\"\n\
         [vm_defaults]\nmin = \"200MiB\"\noverhead = \"96MiB\"\n[ksm]\ncontrol = true\ninterval = \"2s\"\n",
        cg.path().display(),
        qmp_dir.display()
    );
    let mut daemon = Daemon::start(work.path(), 1, &config);
    let ksm_line = || {
        daemon
            .decision_lines()
            .into_iter()
            .find(|l| l.contains("\"event\":\"ksm\""))
    };
    wait_until(Duration::from_secs(30), "the daemon to tune KSM", || {
        std::thread::sleep(Duration::from_millis(500));
        ksm_line().is_some()
    });
    let line = ksm_line().expect("a ksm line");
    println!("{TEST}: {line}");
    assert!(line.contains("\"run\":1"), "KSM started: {line}");
    let state = sysfs.read().expect("KSM state");
    assert_eq!(state.run, 1, "{state:?}");
    assert!((64..=1250).contains(&state.pages_to_scan), "{state:?}");
    // Identical pages (the guests' kernel and initramfs, zeroed pages) merge. Slowly: MoM
    // scans a small host with plenty free at its slowest, 64 pages every 128 ms here.
    // 109–120 s in five runs (docs/benchmarks.md), longer when the guests hold more.
    let took = wait_until(Duration::from_secs(420), "KSM to merge pages", || {
        std::thread::sleep(Duration::from_secs(2));
        sysfs.read().is_ok_and(|s| s.pages_sharing > saved_before)
    });
    assert_eq!(vms.len(), 2);
    let lines = daemon.decision_lines();
    for line in lines.iter().filter(|l| l.contains("\"event\":\"ksm\"")) {
        println!("{TEST}: {line}");
    }
    let state = sysfs.read().expect("KSM state");
    println!(
        "{TEST}: {} pages ({} KiB) saved after {:.0} s ({state:?})",
        state.pages_sharing - saved_before,
        (state.pages_sharing - saved_before) * 4,
        took.as_secs_f64()
    );
    daemon.terminate(Duration::from_secs(5));
}
