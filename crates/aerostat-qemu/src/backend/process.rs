//! The QEMU process as the host sees it: resident memory from `/proc/PID/status`.

use aerostat_core::Bytes;

use crate::qmp::QmpError;

/// Reads `VmRSS` of process `pid`. A vanished process is an `Io` error (`NotFound`).
pub fn read_rss(pid: u32) -> Result<Bytes, QmpError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(QmpError::Io)?;
    parse_vm_rss(&text).ok_or_else(|| {
        QmpError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{path}: no parsable `VmRSS:` line"),
        ))
    })
}

/// Memory the process has touched, from a `/proc/PID/status` text: `VmRSS` (resident) +
/// `VmSwap` (touched, then swapped out by the host) + `HugetlbPages` (hugetlbfs pages are not
/// in `VmRSS`). `None` without a `VmRSS:` line (kernel threads, zombies).
pub fn parse_vm_rss(status: &str) -> Option<Bytes> {
    let field = |name: &str| -> Option<u64> {
        let rest = status.lines().find_map(|l| l.strip_prefix(name))?.trim();
        rest.strip_suffix("kB")?.trim().parse::<u64>().ok()
    };
    let kib = field("VmRSS:")?
        .checked_add(field("VmSwap:").unwrap_or(0))?
        .checked_add(field("HugetlbPages:").unwrap_or(0))?;
    kib.checked_mul(1024).map(Bytes)
}

/// Touched memory of the guest's RAM inside QEMU: `Rss:` + `Swap:` + `Private_Hugetlb:` +
/// `Shared_Hugetlb:` of the mapping in `/proc/PID/smaps` whose `Size:` is exactly `ram` (QEMU
/// maps `-m` RAM as one region). Pages the host swapped out or backs with hugetlbfs are not in
/// `Rss:` but are still the guest's and must still be sent. `None` when no mapping has that
/// size (memory backends split across NUMA nodes): callers fall back to [`read_rss`].
pub fn read_guest_ram_rss(pid: u32, ram: Bytes) -> Result<Option<Bytes>, QmpError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(QmpError::Io)?;
    Ok(parse_smaps_ram_rss(&text, ram))
}

/// See [`read_guest_ram_rss`]. When several mappings have that size, the most touched one
/// is the RAM (the others are reservations QEMU has not touched).
pub fn parse_smaps_ram_rss(smaps: &str, ram: Bytes) -> Option<Bytes> {
    let kib = |rest: &str| -> Option<u64> {
        rest.trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?
            .checked_mul(1024)
    };
    const TOUCHED: [&str; 4] = ["Rss:", "Swap:", "Private_Hugetlb:", "Shared_Hugetlb:"];
    // (size, touched) of the mapping being read; a mapping's fields start with `Size:`.
    let mut current: Option<(Option<u64>, u64)> = None;
    let mut best: Option<Bytes> = None;
    let close = |m: Option<(Option<u64>, u64)>, best: &mut Option<Bytes>| {
        if let Some((Some(size), touched)) = m
            && size == ram.0
        {
            *best = (*best).max(Some(Bytes(touched)));
        }
    };
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Size:") {
            close(current.take(), &mut best);
            current = Some((kib(rest), 0));
        } else if let Some((_, touched)) = current.as_mut()
            && let Some(rest) = TOUCHED.iter().find_map(|k| line.strip_prefix(k))
            && let Some(b) = kib(rest)
        {
            *touched = touched.saturating_add(b);
        }
    }
    close(current, &mut best);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_guest_ram_mapping_by_size() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 900 kB
7f3497e00000-7f34b7e00000 rw-p 00000000 00:00 0
Size:             524288 kB
KernelPageSize:        4 kB
Rss:              118784 kB
Pss:              118784 kB
7f3500000000-7f3520000000 ---p 00000000 00:00 0
Size:             524288 kB
Rss:                   0 kB
";
        assert_eq!(
            parse_smaps_ram_rss(smaps, Bytes::mib(512)),
            Some(Bytes::kib(118784))
        );
        assert_eq!(parse_smaps_ram_rss(smaps, Bytes::mib(1024)), None);
        assert_eq!(
            parse_smaps_ram_rss("Size: lots kB\nRss: 1 kB\n", Bytes(0)),
            None
        );
        // Swapped-out and hugetlbfs pages are the guest's too.
        let swapped = "Size: 524288 kB\nRss: 100000 kB\nSwap: 20000 kB\nPrivate_Hugetlb: 0 kB\n";
        assert_eq!(
            parse_smaps_ram_rss(swapped, Bytes::mib(512)),
            Some(Bytes::kib(120000))
        );
        let huge = "Size: 524288 kB\nRss: 0 kB\nShared_Hugetlb: 0 kB\nPrivate_Hugetlb: 262144 kB\n";
        assert_eq!(
            parse_smaps_ram_rss(huge, Bytes::mib(512)),
            Some(Bytes::kib(262144))
        );
    }

    #[test]
    fn parses_vm_rss() {
        let text =
            "Name:\tqemu-system-x86\nVmPeak:\t 1234 kB\nVmRSS:\t  215040 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(text), Some(Bytes::kib(215040)));
        let swapped = "VmRSS:\t  100 kB\nVmSwap:\t  20 kB\nHugetlbPages:\t 2048 kB\n";
        assert_eq!(parse_vm_rss(swapped), Some(Bytes::kib(2168)));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t99999999999999999999 kB\n"), None);
    }

    #[test]
    fn reads_own_rss() {
        let rss = read_rss(std::process::id()).expect("own /proc status");
        assert!(rss > Bytes::ZERO);
    }
}
