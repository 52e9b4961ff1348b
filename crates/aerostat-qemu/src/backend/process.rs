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

/// The `VmRSS:  123456 kB` line of a `/proc/PID/status` text. Kernel threads and zombies
/// have none.
pub fn parse_vm_rss(status: &str) -> Option<Bytes> {
    let rest = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim();
    let kib = rest.strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024).map(Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let text =
            "Name:\tqemu-system-x86\nVmPeak:\t 1234 kB\nVmRSS:\t  215040 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(text), Some(Bytes::kib(215040)));
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
