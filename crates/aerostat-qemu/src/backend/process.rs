//! The QEMU process as the host sees it: resident memory from `/proc/PID/status`.

use aerostat_core::Bytes;

use crate::qmp::QmpError;

/// The QEMU process's memory as the host sees it, from one `/proc/PID/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMemory {
    /// What the process has touched: `VmRSS` (resident) + `VmSwap` (touched, then swapped
    /// out by the host) + `HugetlbPages` (hugetlbfs pages are not in `VmRSS`).
    pub touched: Bytes,
    /// `VmSwap`: what the host has swapped out (`None`: no such line).
    pub swapped: Option<Bytes>,
}

/// Reads process `pid`'s memory. A vanished process is an `Io` error (`NotFound`).
pub fn read_process_memory(pid: u32) -> Result<ProcessMemory, QmpError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(QmpError::Io)?;
    parse_process_memory(&text).ok_or_else(|| {
        QmpError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{path}: no parsable `VmRSS:` line"),
        ))
    })
}

/// Whether process `pid` is a QEMU, by its `comm` ([`is_qemu_comm`]); `false` when it is
/// gone. A socket's `SO_PEERCRED` names whoever listens on it: a supervisor that made the
/// socket and passed it to QEMU (libvirt can), or another daemon a broad glob catches, is
/// not a guest, and its memory is not a guest's.
pub fn is_qemu(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| is_qemu_comm(c.trim()))
}

/// A QEMU's `comm`: `qemu-system-x86` (the kernel keeps 15 bytes of the name), `qemu-kvm`
/// (RHEL's), or `kvm` (older Debian's).
pub fn is_qemu_comm(comm: &str) -> bool {
    comm.starts_with("qemu") || comm == "kvm"
}

/// Reads what process `pid` has touched ([`ProcessMemory::touched`]).
pub fn read_rss(pid: u32) -> Result<Bytes, QmpError> {
    read_process_memory(pid).map(|m| m.touched)
}

/// A `/proc/PID/status` text's memory; `None` without a `VmRSS:` line (kernel threads,
/// zombies) or with sizes that overflow.
pub fn parse_process_memory(status: &str) -> Option<ProcessMemory> {
    let field = |name: &str| -> Option<u64> {
        let rest = status.lines().find_map(|l| l.strip_prefix(name))?.trim();
        rest.strip_suffix("kB")?.trim().parse::<u64>().ok()
    };
    let swapped = field("VmSwap:");
    let kib = field("VmRSS:")?
        .checked_add(swapped.unwrap_or(0))?
        .checked_add(field("HugetlbPages:").unwrap_or(0))?;
    Some(ProcessMemory {
        touched: Bytes(kib.checked_mul(1024)?),
        swapped: swapped.and_then(|k| k.checked_mul(1024)).map(Bytes),
    })
}

/// What the process has touched, from a `/proc/PID/status` text
/// ([`ProcessMemory::touched`]).
pub fn parse_vm_rss(status: &str) -> Option<Bytes> {
    parse_process_memory(status).map(|m| m.touched)
}

/// Touched memory of the guest's RAM inside QEMU: `Rss:` + `Swap:` + `Private_Hugetlb:` +
/// `Shared_Hugetlb:` of the mapping in `/proc/PID/smaps` whose `Size:` is exactly `ram` (QEMU
/// maps `-m` RAM as one region). Pages the host swapped out or backs with hugetlbfs are not in
/// `Rss:` but are still the guest's and must still be sent. `None` when no mapping has that
/// size (memory backends split across NUMA nodes): callers fall back to [`read_rss`].
pub fn read_guest_ram_rss(pid: u32, ram: Bytes) -> Result<Option<Bytes>, QmpError> {
    Ok(read_guest_ram_pages(pid, ram)?.map(|p| p.touched))
}

/// The guest RAM mapping's pages (see [`read_guest_ram_rss`] for how it is found).
pub fn read_guest_ram_pages(pid: u32, ram: Bytes) -> Result<Option<GuestRamPages>, QmpError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(QmpError::Io)?;
    Ok(parse_smaps_ram(&text, ram))
}

/// Clears the accessed bits of every page of process `pid` (`echo 1 > /proc/PID/clear_refs`):
/// from now on a page's `Referenced:` count in smaps means "touched since". For guest RAM
/// under KVM the kernel clears the bits in the guest's page tables too, through KVM's MMU
/// notifier; under TCG the guest's accesses are QEMU's own loads and stores. So
/// `touched − referenced` a while later is guest memory nobody used in that window: free
/// pages the guest once touched, cold page cache, cold anonymous memory — the coldness
/// signal balloon statistics lack (no active/inactive anon there, no swap totals) and that
/// needs neither `page_idle` (absent on this project's 6.18 kernels) nor DAMON. The host's
/// own reclaim reads the same bits, so its LRU sees the process as idle until touched again:
/// clear at most once per measuring window, not every tick.
pub fn clear_referenced(pid: u32) -> Result<(), QmpError> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "1").map_err(QmpError::Io)
}

/// Pages of the guest RAM mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRamPages {
    /// Touched: resident, host-swapped and hugetlbfs pages ([`read_guest_ram_rss`]).
    pub touched: Bytes,
    /// Resident pages accessed since the last [`clear_referenced`] (or ever, before one).
    pub referenced: Bytes,
}

impl GuestRamPages {
    /// Touched guest memory not accessed since the last [`clear_referenced`].
    pub fn idle(&self) -> Bytes {
        self.touched.saturating_sub(self.referenced)
    }
}

/// See [`read_guest_ram_rss`]. When several mappings have that size, the most touched one
/// is the RAM (the others are reservations QEMU has not touched).
pub fn parse_smaps_ram(smaps: &str, ram: Bytes) -> Option<GuestRamPages> {
    let kib = |rest: &str| -> Option<u64> {
        rest.trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?
            .checked_mul(1024)
    };
    const TOUCHED: [&str; 4] = ["Rss:", "Swap:", "Private_Hugetlb:", "Shared_Hugetlb:"];
    // (size, pages) of the mapping being read; a mapping's fields start with `Size:`.
    let mut current: Option<(Option<u64>, GuestRamPages)> = None;
    let mut best: Option<GuestRamPages> = None;
    let close = |m: Option<(Option<u64>, GuestRamPages)>, best: &mut Option<GuestRamPages>| {
        if let Some((Some(size), pages)) = m
            && size == ram.0
            && best.is_none_or(|b| pages.touched > b.touched)
        {
            *best = Some(pages);
        }
    };
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Size:") {
            close(current.take(), &mut best);
            current = Some((kib(rest), GuestRamPages::default()));
        } else if let Some((_, pages)) = current.as_mut() {
            if let Some(rest) = TOUCHED.iter().find_map(|k| line.strip_prefix(k))
                && let Some(b) = kib(rest)
            {
                pages.touched = pages.touched.saturating_add(Bytes(b));
            } else if let Some(rest) = line.strip_prefix("Referenced:")
                && let Some(b) = kib(rest)
            {
                pages.referenced = Bytes(b);
            }
        }
    }
    close(current, &mut best);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touched_of(smaps: &str, ram: Bytes) -> Option<Bytes> {
        parse_smaps_ram(smaps, ram).map(|p| p.touched)
    }

    #[test]
    fn idle_is_touched_guest_ram_not_referenced_since_the_clear() {
        let smaps = "\
7f3497e00000-7f34b7e00000 rw-p 00000000 00:00 0
Size:             524288 kB
Rss:              307200 kB
Referenced:       102400 kB
Swap:              10240 kB
7f3500000000-7f3520000000 ---p 00000000 00:00 0
Size:             524288 kB
Rss:                   0 kB
Referenced:            0 kB
";
        let pages = parse_smaps_ram(smaps, Bytes::mib(512)).expect("the RAM mapping");
        assert_eq!(pages.touched, Bytes::mib(310));
        assert_eq!(pages.referenced, Bytes::mib(100));
        assert_eq!(pages.idle(), Bytes::mib(210));
        // A count above what is touched (a torn read) is no negative idle.
        let torn = "Size: 524288 kB\nRss: 1024 kB\nReferenced: 2048 kB\n";
        let pages = parse_smaps_ram(torn, Bytes::mib(512)).expect("the RAM mapping");
        assert_eq!(pages.idle(), Bytes(0));
    }

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
        assert_eq!(touched_of(smaps, Bytes::mib(512)), Some(Bytes::kib(118784)));
        assert_eq!(touched_of(smaps, Bytes::mib(1024)), None);
        assert_eq!(touched_of("Size: lots kB\nRss: 1 kB\n", Bytes(0)), None);
        // Swapped-out and hugetlbfs pages are the guest's too.
        let swapped = "Size: 524288 kB\nRss: 100000 kB\nSwap: 20000 kB\nPrivate_Hugetlb: 0 kB\n";
        assert_eq!(
            touched_of(swapped, Bytes::mib(512)),
            Some(Bytes::kib(120000))
        );
        let huge = "Size: 524288 kB\nRss: 0 kB\nShared_Hugetlb: 0 kB\nPrivate_Hugetlb: 262144 kB\n";
        assert_eq!(touched_of(huge, Bytes::mib(512)), Some(Bytes::kib(262144)));
    }

    #[test]
    fn parses_vm_rss() {
        let text =
            "Name:\tqemu-system-x86\nVmPeak:\t 1234 kB\nVmRSS:\t  215040 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(text), Some(Bytes::kib(215040)));
        let swapped = "VmRSS:\t  100 kB\nVmSwap:\t  20 kB\nHugetlbPages:\t 2048 kB\n";
        assert_eq!(parse_vm_rss(swapped), Some(Bytes::kib(2168)));
        assert_eq!(
            parse_process_memory(swapped).map(|m| m.swapped),
            Some(Some(Bytes::kib(20)))
        );
        assert_eq!(
            parse_process_memory(text).map(|m| m.swapped.is_some()),
            Some(text.contains("VmSwap:"))
        );
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
