//! A memory cgroup as the host: its limit is the host's RAM.
//!
//! Tests and benchmarks make a "host" smaller than the machine by putting QEMU processes in a
//! memory cgroup; exceeding its limit reclaims and then OOM-kills inside it, so host pressure
//! is real. This module reads such a cgroup as a [`HostSample`] and has the few helpers to
//! create one, limit it, move processes in and remove it. cgroup v1 and v2 are both handled.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aerostat_core::{Bytes, HostSample};

use crate::error::{HostError, read, write};
use crate::parse::{Format, Pressure, keyed, need, parse_pressure, single_value};
use crate::proc::{ProcHost, host_sample};

/// Where cgroup v1 mounts its memory controller on the machines we run on.
pub const V1_MEMORY_MOUNT: &str = "/sys/fs/cgroup/memory";
/// Where cgroup v2 is mounted when it is the only hierarchy.
pub const V2_MOUNT: &str = "/sys/fs/cgroup";

/// cgroup v1 reports "no limit" as the page-counter maximum rounded to pages
/// (9223372036854771712 with 4 KiB pages); anything from 2^62 up is treated as unlimited.
const V1_UNLIMITED_FROM: u64 = 1 << 62;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One read of a memory cgroup: the [`HostSample`] plus what only a cgroup knows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupSample {
    /// `total` = the limit (capped at the machine's MemTotal; the machine's when unlimited),
    /// `free` = total − usage, `available` ≈ total − usage + inactive file cache (what reclaim
    /// can take without swapping), `buffers_cached` = the cgroup's page cache. Swap sizes and
    /// traffic are the machine's (swap is a machine resource). PSI is the cgroup's own on v2
    /// and the machine-wide file on v1, which has no per-cgroup PSI (a superset: stalls of
    /// tasks outside the cgroup count too).
    pub host: HostSample,
    /// The configured limit; `None` when unlimited.
    pub limit: Option<Bytes>,
    /// Memory charged to the cgroup (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub usage: Bytes,
    /// Inactive file pages: reclaimable without I/O beyond writeback.
    pub reclaimable: Bytes,
    /// OOM kills inside the cgroup (v1 `memory.oom_control`, v2 `memory.events`); `None` on
    /// kernels that do not count them.
    pub oom_kills: Option<u64>,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events` `max`).
    pub limit_hits: Option<u64>,
}

/// A memory cgroup directory.
#[derive(Clone, Debug)]
pub struct CgroupHost {
    path: PathBuf,
    version: CgroupVersion,
    proc: ProcHost,
}

impl CgroupHost {
    /// Opens an existing memory cgroup, detecting its version from the files it has.
    pub fn open(path: impl Into<PathBuf>) -> Result<CgroupHost, HostError> {
        let path = path.into();
        let version = if path.join("memory.limit_in_bytes").exists() {
            CgroupVersion::V1
        } else if path.join("memory.max").exists() || path.join("memory.current").exists() {
            CgroupVersion::V2
        } else {
            return Err(HostError::Unsupported {
                path,
                detail:
                    "not a memory cgroup (no memory.limit_in_bytes, memory.max or memory.current)"
                        .into(),
            });
        };
        Ok(CgroupHost {
            path,
            version,
            proc: ProcHost::default(),
        })
    }

    /// Creates `parent/name` (or opens it if it exists). On v2 the parent must have `memory` in
    /// its `cgroup.subtree_control`.
    pub fn create(parent: &Path, name: &str) -> Result<CgroupHost, HostError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(HostError::Unsupported {
                path: parent.to_path_buf(),
                detail: format!("`{name}` is not a cgroup name"),
            });
        }
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(HostError::io(path, e)),
        }
        CgroupHost::open(path)
    }

    /// Reads `/proc` somewhere else (tests).
    pub fn with_proc(mut self, proc: ProcHost) -> CgroupHost {
        self.proc = proc;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Whether process `pid`'s memory is charged here ([`charged_to`]); `false` when its
    /// `/proc/PID/cgroup` cannot be read (it is gone).
    pub fn charges(&self, pid: u32) -> bool {
        // `host.cgroup` as configured may be relative or pass through a symlink; /proc
        // names the cgroup by its own path.
        let dir = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|text| charged_to(&dir, self.version, &text))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Sets the memory limit (v1 `memory.limit_in_bytes`, v2 `memory.max`). The kernel refuses
    /// (`EBUSY`) a v1 limit below current usage that reclaim cannot reach.
    pub fn set_limit(&self, limit: Bytes) -> Result<(), HostError> {
        let name = match self.version {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        };
        write(&self.file(name), &limit.0.to_string())
    }

    /// Moves process `pid` (all its threads) into this cgroup. On v1 its existing memory stays
    /// charged where it was; new allocations are charged here.
    pub fn add_pid(&self, pid: u32) -> Result<(), HostError> {
        write(&self.file("cgroup.procs"), &pid.to_string())
    }

    /// Processes in this cgroup.
    pub fn pids(&self) -> Result<Vec<u32>, HostError> {
        let path = self.file("cgroup.procs");
        let text = read(&path)?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                l.trim()
                    .parse()
                    .map_err(|_| HostError::parse(&path, i + 1, format!("not a pid: `{l}`")))
            })
            .collect()
    }

    /// Moves any remaining processes to the parent cgroup and removes the directory. Retries
    /// for a moment: a just-killed process leaves the cgroup asynchronously.
    pub fn remove(self) -> Result<(), HostError> {
        let parent_procs = self.path.parent().map(|p| p.join("cgroup.procs"));
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(parent_procs) = &parent_procs {
                for pid in self.pids().unwrap_or_default() {
                    // A process that exited meanwhile (ESRCH) is fine.
                    let _ = std::fs::write(parent_procs, pid.to_string());
                }
            }
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(16) => {
                    // EBUSY: still populated.
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(HostError::io(&self.path, e)),
            }
        }
    }

    /// One sample of this cgroup as the host.
    pub fn sample(&self) -> Result<CgroupSample, HostError> {
        let machine = self.proc.meminfo()?;
        let swap = self.proc.swap_traffic()?;
        let raw = match self.version {
            CgroupVersion::V1 => self.read_v1()?,
            CgroupVersion::V2 => self.read_v2()?,
        };
        let psi = match (self.version, &raw.psi) {
            (CgroupVersion::V2, Some(p)) => Some(*p),
            _ => self.proc.pressure()?,
        };
        let mut host = host_sample(&machine, &swap, psi.as_ref());
        let total = raw.limit.map_or(machine.total, |l| l.min(machine.total));
        host.total = total;
        host.free = total - raw.usage;
        host.available = ((total - raw.usage) + raw.reclaimable).min(total);
        host.buffers_cached = raw.cache;
        Ok(CgroupSample {
            host,
            limit: raw.limit,
            usage: raw.usage,
            reclaimable: raw.reclaimable,
            oom_kills: raw.oom_kills,
            limit_hits: raw.limit_hits,
        })
    }

    fn read_v1(&self) -> Result<RawCgroup, HostError> {
        let limit_path = self.file("memory.limit_in_bytes");
        let limit = single_value(&read(&limit_path)?, &limit_path)?
            .filter(|&l| l < V1_UNLIMITED_FROM)
            .map(Bytes);
        let usage_path = self.file("memory.usage_in_bytes");
        let usage = single_value(&read(&usage_path)?, &usage_path)?.unwrap_or(0);
        let stat = parse_v1_stat(&read(&self.file("memory.stat"))?, &self.file("memory.stat"))?;
        let failcnt_path = self.file("memory.failcnt");
        let limit_hits = single_value(&read(&failcnt_path)?, &failcnt_path)?;
        let oom_path = self.file("memory.oom_control");
        let oom = keyed(&read(&oom_path)?, &oom_path, Format::Flat, &["oom_kill"])?;
        Ok(RawCgroup {
            limit,
            usage: Bytes(usage),
            cache: stat.cache,
            reclaimable: stat.inactive_file,
            oom_kills: oom.get("oom_kill").copied(),
            limit_hits,
            psi: None,
        })
    }

    fn read_v2(&self) -> Result<RawCgroup, HostError> {
        let max_path = self.file("memory.max");
        let limit = single_value(&read(&max_path)?, &max_path)?.map(Bytes);
        let cur_path = self.file("memory.current");
        let usage = single_value(&read(&cur_path)?, &cur_path)?.unwrap_or(0);
        let stat = parse_v2_stat(&read(&self.file("memory.stat"))?, &self.file("memory.stat"))?;
        let ev_path = self.file("memory.events");
        let events = keyed(
            &read(&ev_path)?,
            &ev_path,
            Format::Flat,
            &["oom_kill", "max"],
        )?;
        let psi_path = self.file("memory.pressure");
        let psi = match std::fs::read_to_string(&psi_path) {
            Ok(text) => Some(parse_pressure(&text, &psi_path)?),
            Err(_) => None,
        };
        Ok(RawCgroup {
            limit,
            usage: Bytes(usage),
            cache: stat.cache,
            reclaimable: stat.inactive_file,
            oom_kills: events.get("oom_kill").copied(),
            limit_hits: events.get("max").copied(),
            psi,
        })
    }
}

struct RawCgroup {
    limit: Option<Bytes>,
    usage: Bytes,
    cache: Bytes,
    reclaimable: Bytes,
    oom_kills: Option<u64>,
    limit_hits: Option<u64>,
    psi: Option<Pressure>,
}

/// The page-cache figures of a cgroup's `memory.stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStat {
    /// All page cache charged to the cgroup.
    pub cache: Bytes,
    /// The inactive part of it, which reclaim takes first.
    pub inactive_file: Bytes,
}

/// cgroup v1 `memory.stat`: the hierarchical `total_cache` and `total_inactive_file`.
pub fn parse_v1_stat(text: &str, path: &Path) -> Result<CgroupStat, HostError> {
    let m = keyed(
        text,
        path,
        Format::Flat,
        &["total_cache", "total_inactive_file"],
    )?;
    Ok(CgroupStat {
        cache: Bytes(need(&m, "total_cache", path)?),
        inactive_file: Bytes(need(&m, "total_inactive_file", path)?),
    })
}

/// cgroup v2 `memory.stat`: `file` and `inactive_file` (always hierarchical in v2).
pub fn parse_v2_stat(text: &str, path: &Path) -> Result<CgroupStat, HostError> {
    let m = keyed(text, path, Format::Flat, &["file", "inactive_file"])?;
    Ok(CgroupStat {
        cache: Bytes(need(&m, "file", path)?),
        inactive_file: Bytes(need(&m, "inactive_file", path)?),
    })
}

/// Where this process's memory cgroup lives, from a `/proc/self/cgroup` text: the v1 `memory`
/// hierarchy's path, or else the v2 (`0::`) path. Relative to the controller's mount.
pub fn parse_proc_cgroup(text: &str) -> Option<(CgroupVersion, String)> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some((CgroupVersion::V1, path.to_string()));
        }
        if controllers.is_empty() {
            v2 = Some((CgroupVersion::V2, path.to_string()));
        }
    }
    v2
}

/// Whether a process whose `/proc/PID/cgroup` reads `proc_cgroup` is charged to the memory
/// cgroup at `dir` (of `version`): it runs there or in a cgroup below it.
pub fn charged_to(dir: &Path, version: CgroupVersion, proc_cgroup: &str) -> bool {
    let Some((v, rel)) = parse_proc_cgroup(proc_cgroup) else {
        return false;
    };
    // A path seen from another cgroup namespace climbs out with `..`: where it lands is not
    // known here, and `Path::starts_with` would not resolve it.
    if Path::new(&rel)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return false;
    }
    let mount = match v {
        CgroupVersion::V1 => V1_MEMORY_MOUNT,
        CgroupVersion::V2 => V2_MOUNT,
    };
    v == version
        && Path::new(mount)
            .join(rel.trim_start_matches('/'))
            .starts_with(dir)
}

/// This process's own memory cgroup, if the memory controller is usable here. Creating test
/// cgroups *below* it keeps them inside whatever limits the caller already runs under.
pub fn own_memory_cgroup() -> Result<Option<CgroupHost>, HostError> {
    let path = Path::new("/proc/self/cgroup");
    let Some((version, rel)) = parse_proc_cgroup(&read(path)?) else {
        return Ok(None);
    };
    let mount = match version {
        CgroupVersion::V1 => V1_MEMORY_MOUNT,
        CgroupVersion::V2 => V2_MOUNT,
    };
    let dir = Path::new(mount).join(rel.trim_start_matches('/'));
    Ok(CgroupHost::open(dir).ok().filter(|c| c.version == version))
}

/// Whether this process runs as root (effective uid 0, from `/proc/self/status`): creating
/// memory cgroups needs it. `false` when the file cannot be read.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process is charged to its own cgroup and every one above it, not to a sibling or
    /// to a cgroup of the other version.
    #[test]
    fn a_process_is_charged_to_its_cgroup_and_those_above() {
        let v2 = "0::/machine.slice/vm-a.scope\n";
        let under = |dir: &str, v| charged_to(Path::new(dir), v, v2);
        assert!(under(
            "/sys/fs/cgroup/machine.slice/vm-a.scope",
            CgroupVersion::V2
        ));
        assert!(under("/sys/fs/cgroup/machine.slice", CgroupVersion::V2));
        assert!(under("/sys/fs/cgroup/machine.slice/", CgroupVersion::V2));
        assert!(!under(
            "/sys/fs/cgroup/machine.slice/vm-b.scope",
            CgroupVersion::V2
        ));
        // A prefix of the name is not a parent: paths compare by component.
        assert!(!under(
            "/sys/fs/cgroup/machine.slice/vm-a.sc",
            CgroupVersion::V2
        ));
        assert!(!under("/sys/fs/cgroup/machine.slice", CgroupVersion::V1));
        let v1 = "12:memory:/aerostat/host\n1:name=systemd:/user.slice\n";
        assert!(charged_to(
            Path::new("/sys/fs/cgroup/memory/aerostat"),
            CgroupVersion::V1,
            v1
        ));
        assert!(!charged_to(
            Path::new("/sys/fs/cgroup/memory/aerostat"),
            CgroupVersion::V1,
            ""
        ));
        // Seen from another cgroup namespace: not known to be here.
        assert!(!charged_to(
            Path::new("/sys/fs/cgroup"),
            CgroupVersion::V2,
            "0::/../../system.slice/x.scope\n"
        ));
    }

    /// cgroup v1 `memory.stat` from this project's machine (trimmed).
    const V1_STAT: &str = "cache 10321920
rss 6725632
inactive_file 131072
hierarchical_memory_limit 9223372036854771712
total_cache 2536079360
total_rss 187658240
total_inactive_anon 180760576
total_inactive_file 1348018176
";

    const V2_STAT: &str = "anon 4096000
file 104857600
kernel 2000000
inactive_anon 0
active_anon 4096000
inactive_file 52428800
active_file 52428800
";

    const MEMINFO: &str = "MemTotal: 1048576 kB\nMemFree: 524288 kB\nMemAvailable: 786432 kB\nBuffers: 0 kB\nCached: 262144 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n";

    fn fake_proc(dir: &Path) -> ProcHost {
        let p = dir.join("proc");
        std::fs::create_dir_all(p.join("pressure")).expect("mkdir");
        std::fs::write(p.join("meminfo"), MEMINFO).expect("write");
        std::fs::write(p.join("vmstat"), "pswpin 1\npswpout 2\n").expect("write");
        std::fs::write(
            p.join("pressure/memory"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=900\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=90\n",
        )
        .expect("write");
        ProcHost::new(p)
    }

    fn files(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).expect("mkdir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
    }

    #[test]
    fn v1_stat() {
        let s = parse_v1_stat(V1_STAT, Path::new("memory.stat")).expect("parses");
        assert_eq!(s.cache, Bytes(2536079360));
        assert_eq!(s.inactive_file, Bytes(1348018176));
        let e = parse_v1_stat("cache 1\n", Path::new("memory.stat")).expect_err("missing");
        assert!(e.to_string().contains("total_cache"), "{e}");
    }

    #[test]
    fn v1_sample_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("cg");
        files(
            &cg,
            &[
                ("memory.limit_in_bytes", "268435456\n"),
                ("memory.usage_in_bytes", "201326592\n"),
                (
                    "memory.stat",
                    "total_cache 67108864\ntotal_inactive_file 33554432\n",
                ),
                ("memory.failcnt", "3\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
                ),
                ("cgroup.procs", "12\n34\n"),
            ],
        );
        let host = CgroupHost::open(&cg)
            .expect("open")
            .with_proc(fake_proc(dir.path()));
        assert_eq!(host.version(), CgroupVersion::V1);
        assert_eq!(host.pids().expect("pids"), vec![12, 34]);
        let s = host.sample().expect("sample");
        assert_eq!(s.limit, Some(Bytes::mib(256)));
        assert_eq!(s.host.total, Bytes::mib(256));
        assert_eq!(s.host.free, Bytes::mib(64));
        assert_eq!(
            s.host.available,
            Bytes::mib(96),
            "limit − usage + inactive file"
        );
        assert_eq!(s.host.buffers_cached, Bytes::mib(64));
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!(s.limit_hits, Some(3));
        assert_eq!(s.host.psi_some_us, Some(900), "v1: machine-wide PSI");
        assert_eq!(s.host.swap_out, Bytes(2 * 4096));
    }

    #[test]
    fn v1_unlimited_uses_machine_total() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("cg");
        files(
            &cg,
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "0\n"),
                ("memory.stat", V1_STAT),
                ("memory.failcnt", "0\n"),
                ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n"),
            ],
        );
        let s = CgroupHost::open(&cg)
            .expect("open")
            .with_proc(fake_proc(dir.path()))
            .sample()
            .expect("sample");
        assert_eq!(s.limit, None);
        assert_eq!(s.host.total, Bytes::gib(1));
        assert!(s.host.available <= s.host.total);
        assert_eq!(s.oom_kills, None, "old kernel without oom_kill: unknown");
    }

    #[test]
    fn v2_sample_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("cg");
        files(
            &cg,
            &[
                ("memory.max", "536870912\n"),
                ("memory.current", "157286400\n"),
                ("memory.stat", V2_STAT),
                (
                    "memory.events",
                    "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n",
                ),
                (
                    "memory.pressure",
                    "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
                ),
            ],
        );
        let host = CgroupHost::open(&cg)
            .expect("open")
            .with_proc(fake_proc(dir.path()));
        assert_eq!(host.version(), CgroupVersion::V2);
        let s = host.sample().expect("sample");
        assert_eq!(s.host.total, Bytes::mib(512));
        assert_eq!(s.usage, Bytes::mib(150));
        assert_eq!(s.host.available, Bytes::mib(512 - 150 + 50));
        assert_eq!(s.host.buffers_cached, Bytes::mib(100));
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!(s.limit_hits, Some(7));
        assert_eq!(s.host.psi_some_us, Some(5), "v2: the cgroup's own PSI");
        std::fs::write(cg.join("memory.max"), "max\n").expect("write");
        assert_eq!(host.sample().expect("sample").host.total, Bytes::gib(1));
    }

    #[test]
    fn limit_above_machine_is_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("cg");
        files(
            &cg,
            &[
                ("memory.max", "17179869184\n"),
                ("memory.current", "0\n"),
                ("memory.stat", V2_STAT),
                ("memory.events", "oom_kill 0\n"),
            ],
        );
        let s = CgroupHost::open(&cg)
            .expect("open")
            .with_proc(fake_proc(dir.path()))
            .sample()
            .expect("sample");
        assert_eq!(s.host.total, Bytes::gib(1));
        assert_eq!(
            s.host.psi_some_us,
            Some(900),
            "no memory.pressure: machine-wide"
        );
    }

    #[test]
    fn not_a_cgroup_is_unsupported() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            CgroupHost::open(dir.path()),
            Err(HostError::Unsupported { .. })
        ));
        assert!(CgroupHost::create(dir.path(), "../x").is_err());
    }

    #[test]
    fn proc_self_cgroup() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/41ba\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(v1),
            Some((CgroupVersion::V1, "/process_api/41ba".into()))
        );
        assert_eq!(
            parse_proc_cgroup("0::/user.slice/session-1.scope\n"),
            Some((CgroupVersion::V2, "/user.slice/session-1.scope".into()))
        );
        assert_eq!(
            parse_proc_cgroup("3:cpu,memory:/a\n"),
            Some((CgroupVersion::V1, "/a".into()))
        );
        assert_eq!(parse_proc_cgroup("garbage"), None);
    }
}
