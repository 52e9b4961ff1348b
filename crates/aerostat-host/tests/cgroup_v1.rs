//! Real cgroup v1 memory controller: a small "host" made of a limited cgroup.
//!
//! Needs root and a v1 memory hierarchy (this project's machines have both); otherwise each
//! test prints a SKIP line and returns. Test cgroups are created *below* this process's own
//! memory cgroup, so they stay inside whatever limits the test run already has.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use aerostat_core::Bytes;
use aerostat_host::{CgroupHost, CgroupVersion, own_memory_cgroup, running_as_root};

/// The parent for test cgroups, or `None` (with a SKIP line) when this machine cannot run them.
fn v1_parent(test: &str) -> Option<CgroupHost> {
    if !running_as_root() {
        println!("SKIP {test}: needs root to create memory cgroups");
        return None;
    }
    match own_memory_cgroup() {
        Ok(Some(cg)) if cg.version() == CgroupVersion::V1 => Some(cg),
        Ok(_) => {
            println!("SKIP {test}: no cgroup v1 memory controller here");
            None
        }
        Err(e) => {
            println!("SKIP {test}: cannot find this process's memory cgroup: {e}");
            None
        }
    }
}

/// A limited cgroup with one child process in it; `Drop` kills the child and removes the
/// cgroup.
struct SmallHost {
    cgroup: Option<CgroupHost>,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl SmallHost {
    fn start(parent: &CgroupHost, test: &str, limit: Bytes, script: &str) -> SmallHost {
        let name = format!("aerostat-test-{}-{test}", std::process::id());
        let cgroup = CgroupHost::create(parent.path(), &name).expect("create cgroup");
        cgroup.set_limit(limit).expect("set limit");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        cgroup.add_pid(child.id()).expect("move child into cgroup");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        SmallHost {
            cgroup: Some(cgroup),
            child,
            stdin,
            stdout,
        }
    }

    fn cgroup(&self) -> &CgroupHost {
        self.cgroup.as_ref().expect("present until drop")
    }

    /// Lets the child's script past its `read`, after it was moved into the cgroup.
    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write to child");
        stdin.flush().expect("flush");
    }

    fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read child");
        assert_eq!(line.trim(), want);
    }
}

impl Drop for SmallHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(cg) = self.cgroup.take() {
            let path = cg.path().to_path_buf();
            if let Err(e) = cg.remove() {
                eprintln!("could not remove test cgroup {}: {e}", path.display());
            }
        }
    }
}

fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn small_host_from_a_v1_cgroup() {
    let Some(parent) = v1_parent("small_host_from_a_v1_cgroup") else {
        return;
    };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir on disk");
    let file = dir.path().join("cache.bin");
    // Wait until moved in, then write 32 MiB of page cache (charged to the cgroup), flushed so
    // it is clean and reclaimable, then idle like the brief's `sleep`.
    let script = format!(
        "read _; dd if=/dev/zero of='{}' bs=1M count=32 conv=fsync 2>/dev/null; echo done; exec sleep 60",
        file.display()
    );
    let mut host = SmallHost::start(&parent, "small", Bytes::mib(256), &script);
    assert!(
        host.cgroup()
            .pids()
            .expect("cgroup.procs")
            .contains(&host.child.id())
    );

    let before = host.cgroup().sample().expect("sample");
    assert_eq!(before.limit, Some(Bytes::mib(256)));
    assert_eq!(before.host.total, Bytes::mib(256));
    assert!(before.host.available <= before.host.total);
    assert_eq!(before.oom_kills, Some(0));

    host.go();
    host.expect_line("done");
    let after = host.cgroup().sample().expect("sample");
    println!(
        "usage {} cache {} reclaimable {} free {} available {}",
        after.usage,
        after.host.buffers_cached,
        after.reclaimable,
        after.host.free,
        after.host.available
    );
    assert!(after.usage >= Bytes::mib(16), "page cache is charged here");
    assert!(after.host.buffers_cached >= Bytes::mib(16));
    assert!(after.host.free < before.host.free);
    assert!(
        after.host.available >= after.host.free,
        "cache counts as available"
    );
    assert!(after.host.available <= after.host.total);
    assert!(after.host.swap_total == Bytes::ZERO || after.host.swap_free <= after.host.swap_total);
}

#[test]
fn oom_kill_inside_a_v1_cgroup_is_counted() {
    let Some(parent) = v1_parent("oom_kill_inside_a_v1_cgroup_is_counted") else {
        return;
    };
    // `tail /dev/zero` buffers forever looking for a newline: memory grows until the cgroup's
    // OOM killer stops it. The machine has no swap by default, so 64 MiB is the hard wall.
    let mut host = SmallHost::start(
        &parent,
        "oom",
        Bytes::mib(64),
        "read _; exec tail /dev/zero",
    );
    host.go();
    let status = wait_until("the OOM kill", Duration::from_secs(30), || {
        host.child.try_wait().expect("try_wait")
    });
    assert!(!status.success(), "killed, not exited: {status}");
    let s = host.cgroup().sample().expect("sample");
    assert!(s.oom_kills >= Some(1), "{s:?}");
    assert!(s.limit_hits >= Some(1), "{s:?}");
}
