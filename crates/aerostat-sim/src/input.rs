//! Reading a file the user named (a scenario, a daemon config, recorded observations):
//! whole, but never more than a bound — `/dev/zero` named by mistake would otherwise be
//! read until memory runs out. A FIFO or `<(…)` is read like a file (and waits for its
//! writer, as `cat` does); a trace's reader is stricter (`workload::load_trace`).

use std::io::{self, Read};
use std::path::Path;

use aerostat_core::Bytes;

/// The largest scenario or config file read: far above any real one (the largest shipped
/// scenario is a few KiB; 10,000 VMs of `[[vm]]` tables are about 2 MiB).
pub const MAX_TOML_BYTES: u64 = 64 << 20;

/// The largest observation file `aerostat decide` reads: hours of a daemon's debug log
/// for a few VMs, or one observation of 100,000 (about 30 MiB).
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Reads `path` as UTF-8 text of at most `max` bytes; a longer file is an error
/// (`InvalidData`, saying the bound), not a partial read.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {}, the most aerostat reads from one file",
                Bytes(max)
            ),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_at_the_bound_is_read_and_one_past_it_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "abcd").expect("write");
        assert_eq!(read_bounded(&path, 4).expect("at the bound"), "abcd");
        let err = read_bounded(&path, 3).expect_err("past the bound");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("larger than 3 B"), "{err}");
    }

    #[test]
    fn an_endless_device_is_refused_at_the_bound() {
        let err = read_bounded(Path::new("/dev/zero"), 1 << 10).expect_err("endless");
        assert!(err.to_string().contains("larger than 1 KiB"), "{err}");
    }
}
