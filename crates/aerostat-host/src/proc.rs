//! The whole machine as the host: `/proc/meminfo`, `/proc/vmstat`, `/proc/pressure/memory`,
//! and what KSM saves (`/sys/kernel/mm/ksm/pages_sharing`).

use std::path::{Path, PathBuf};

use aerostat_core::{Bytes, HostSample};

use crate::error::{HostError, read};
use crate::parse::{Format, Pressure, keyed, need, parse_pressure};

/// Bytes per page in vmstat's `pswpin`/`pswpout`. These count base pages; 4 KiB on x86-64,
/// the only architecture aerostat is tested on. (Reading the real size needs `sysconf`, i.e.
/// `libc` and `unsafe`, for a number that is constant where we run.)
pub const SWAP_PAGE_BYTES: u64 = 4096;

/// The fields of `/proc/meminfo` the controller uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meminfo {
    pub total: Bytes,
    pub free: Bytes,
    pub available: Bytes,
    pub buffers: Bytes,
    pub cached: Bytes,
    pub swap_total: Bytes,
    pub swap_free: Bytes,
}

/// Swap traffic since boot from `/proc/vmstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapTraffic {
    pub swap_in: Bytes,
    pub swap_out: Bytes,
}

/// Parses `/proc/meminfo`. All seven fields are required (every kernel since 3.14 has them).
pub fn parse_meminfo(text: &str, path: &Path) -> Result<Meminfo, HostError> {
    const KEYS: [&str; 7] = [
        "MemTotal",
        "MemFree",
        "MemAvailable",
        "Buffers",
        "Cached",
        "SwapTotal",
        "SwapFree",
    ];
    let m = keyed(text, path, Format::Meminfo, &KEYS)?;
    let b = |k| need(&m, k, path).map(Bytes);
    Ok(Meminfo {
        total: b("MemTotal")?,
        free: b("MemFree")?,
        available: b("MemAvailable")?,
        buffers: b("Buffers")?,
        cached: b("Cached")?,
        swap_total: b("SwapTotal")?,
        swap_free: b("SwapFree")?,
    })
}

/// Parses `/proc/vmstat` for `pswpin`/`pswpout` (pages) and returns bytes.
pub fn parse_vmstat(text: &str, path: &Path) -> Result<SwapTraffic, HostError> {
    let m = keyed(text, path, Format::Flat, &["pswpin", "pswpout"])?;
    let bytes = |k| need(&m, k, path).map(|p| Bytes(p.saturating_mul(SWAP_PAGE_BYTES)));
    Ok(SwapTraffic {
        swap_in: bytes("pswpin")?,
        swap_out: bytes("pswpout")?,
    })
}

/// Combines the three sources into the sample the core consumes.
pub fn host_sample(mem: &Meminfo, swap: &SwapTraffic, psi: Option<&Pressure>) -> HostSample {
    HostSample {
        total: mem.total,
        free: mem.free,
        available: mem.available,
        buffers_cached: mem.buffers + mem.cached,
        swap_total: mem.swap_total,
        swap_free: mem.swap_free,
        swap_in: swap.swap_in,
        swap_out: swap.swap_out,
        psi_some_us: psi.and_then(|p| p.some_total_us),
        psi_full_us: psi.and_then(|p| p.full_total_us),
        ksm_saved: None,
        // The daemon knows which guests it drives; the host does not.
        unmanaged: Bytes::ZERO,
    }
}

/// Parses KSM's `pages_sharing` (how many more page mappings share a merged page: the pages
/// saved) and returns bytes.
pub fn parse_ksm_pages_sharing(text: &str, path: &Path) -> Result<Bytes, HostError> {
    text.trim()
        .parse::<u64>()
        .map(|pages| Bytes(pages.saturating_mul(SWAP_PAGE_BYTES)))
        .map_err(|_| HostError::parse(path, 1, format!("`{}` is not a page count", text.trim())))
}

/// Reads the machine's memory state from a `/proc` tree (the real one, or a copy in tests),
/// and KSM's savings from its sysfs directory when there is one.
#[derive(Clone, Debug)]
pub struct ProcHost {
    root: PathBuf,
    ksm_dir: Option<PathBuf>,
}

impl Default for ProcHost {
    fn default() -> Self {
        ProcHost::new("/proc").with_ksm_dir("/sys/kernel/mm/ksm")
    }
}

impl ProcHost {
    /// A `/proc` tree, without KSM (`ksm_saved` unknown).
    pub fn new(root: impl Into<PathBuf>) -> ProcHost {
        ProcHost {
            root: root.into(),
            ksm_dir: None,
        }
    }

    /// KSM's sysfs directory (`/sys/kernel/mm/ksm` on a real host).
    pub fn with_ksm_dir(mut self, dir: impl Into<PathBuf>) -> ProcHost {
        self.ksm_dir = Some(dir.into());
        self
    }

    /// Memory KSM saves now, or `None` on a kernel built without KSM (no such directory).
    /// KSM that is switched off saves nothing: `Some(0)`.
    pub fn ksm_saved(&self) -> Result<Option<Bytes>, HostError> {
        let Some(dir) = &self.ksm_dir else {
            return Ok(None);
        };
        let path = dir.join("pages_sharing");
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_ksm_pages_sharing(&text, &path).map(Some),
            Err(_) if !path.exists() => Ok(None),
            Err(e) => Err(HostError::io(path, e)),
        }
    }

    pub fn meminfo(&self) -> Result<Meminfo, HostError> {
        let path = self.root.join("meminfo");
        parse_meminfo(&read(&path)?, &path)
    }

    pub fn swap_traffic(&self) -> Result<SwapTraffic, HostError> {
        let path = self.root.join("vmstat");
        parse_vmstat(&read(&path)?, &path)
    }

    /// Machine-wide memory PSI, or `None` on kernels built without PSI (or booted `psi=0`,
    /// where the file exists but reads fail with `EOPNOTSUPP`).
    pub fn pressure(&self) -> Result<Option<Pressure>, HostError> {
        let path = self.root.join("pressure/memory");
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_pressure(&text, &path).map(Some),
            Err(_) if !path.exists() => Ok(None),
            Err(e) if e.raw_os_error() == Some(95) => Ok(None), // EOPNOTSUPP
            Err(e) => Err(HostError::io(path, e)),
        }
    }

    /// One [`HostSample`] of the whole machine.
    pub fn sample(&self) -> Result<HostSample, HostError> {
        let mem = self.meminfo()?;
        let swap = self.swap_traffic()?;
        let psi = self.pressure()?;
        let mut sample = host_sample(&mem, &swap, psi.as_ref());
        sample.ksm_saved = self.ksm_saved()?;
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From this project's machine (Debian 12 host, 24 GiB, no swap); trimmed.
    const MEMINFO: &str = "MemTotal:       24684096 kB
MemFree:        21668296 kB
MemAvailable:   23995588 kB
Buffers:           15088 kB
Cached:          2476640 kB
SwapCached:            0 kB
Active:          1156800 kB
SwapTotal:       2097148 kB
SwapFree:        2097000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    const VMSTAT: &str = "nr_free_pages 5417074
pswpin 12
pswpout 340
pgfault 15188449
";

    const PSI: &str = "some avg10=0.00 avg60=0.00 avg300=0.00 total=81234
full avg10=0.00 avg60=0.00 avg300=0.00 total=4567
";

    #[test]
    fn parses_real_meminfo() {
        let m = parse_meminfo(MEMINFO, Path::new("/proc/meminfo")).expect("parses");
        assert_eq!(m.total, Bytes::kib(24684096));
        assert_eq!(m.free, Bytes::kib(21668296));
        assert_eq!(m.available, Bytes::kib(23995588));
        assert_eq!(m.buffers, Bytes::kib(15088));
        assert_eq!(m.cached, Bytes::kib(2476640));
        assert_eq!(m.swap_total, Bytes::kib(2097148));
        assert_eq!(m.swap_free, Bytes::kib(2097000));
    }

    #[test]
    fn missing_meminfo_key_is_named() {
        let text = MEMINFO.replace("MemAvailable", "MemAvail");
        let e = parse_meminfo(&text, Path::new("/proc/meminfo")).expect_err("missing");
        assert_eq!(e.to_string(), "/proc/meminfo: no `MemAvailable`");
    }

    #[test]
    fn vmstat_pages_become_bytes() {
        let s = parse_vmstat(VMSTAT, Path::new("/proc/vmstat")).expect("parses");
        assert_eq!(s.swap_in, Bytes(12 * 4096));
        assert_eq!(s.swap_out, Bytes(340 * 4096));
    }

    #[test]
    fn sample_from_a_fake_proc_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("meminfo"), MEMINFO).expect("write");
        std::fs::write(dir.path().join("vmstat"), VMSTAT).expect("write");
        let host = ProcHost::new(dir.path());
        let s = host.sample().expect("sample");
        assert_eq!(s.psi_some_us, None, "no pressure file: unknown, not zero");
        assert_eq!(s.buffers_cached, Bytes::kib(15088 + 2476640));
        std::fs::create_dir(dir.path().join("pressure")).expect("mkdir");
        std::fs::write(dir.path().join("pressure/memory"), PSI).expect("write");
        let s = host.sample().expect("sample");
        assert_eq!(s.psi_some_us, Some(81234));
        assert_eq!(s.ksm_saved, None, "no KSM directory: unknown");
        assert_eq!(s.psi_full_us, Some(4567));
        assert_eq!(s.swap_out, Bytes(340 * 4096));
    }

    #[test]
    fn live_proc_is_readable() {
        // Linux only, but that is all aerostat runs on.
        let s = ProcHost::default().sample().expect("live /proc");
        assert!(s.total > Bytes::ZERO);
        assert!(s.available <= s.total);
    }
}

#[cfg(test)]
mod ksm_tests {
    use super::*;

    #[test]
    fn ksm_savings_are_pages_sharing_in_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = ProcHost::new(dir.path()).with_ksm_dir(dir.path().join("ksm"));
        assert_eq!(
            host.ksm_saved().expect("no dir"),
            None,
            "kernel without KSM"
        );
        std::fs::create_dir(dir.path().join("ksm")).expect("mkdir");
        std::fs::write(dir.path().join("ksm/pages_sharing"), "262144\n").expect("write");
        assert_eq!(host.ksm_saved().expect("reads"), Some(Bytes::gib(1)));
        std::fs::write(dir.path().join("ksm/pages_sharing"), "lots\n").expect("write");
        let e = host.ksm_saved().expect_err("not a number");
        assert!(e.to_string().contains("pages_sharing"), "{e}");
        assert!(e.to_string().contains("`lots`"), "{e}");
    }
}
