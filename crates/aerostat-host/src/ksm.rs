//! KSM's controls in sysfs (`/sys/kernel/mm/ksm`): read its state, apply a tuning. What the
//! tuning is, is `aerostat_core::ksm`'s to decide.

use std::path::{Path, PathBuf};

use aerostat_core::ksm::KsmTuning;

use crate::error::{HostError, read, write};

/// The machine's KSM directory.
pub const KSM_DIR: &str = "/sys/kernel/mm/ksm";

/// KSM's controls and its main counter, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KsmState {
    /// 0 stopped, 1 merging, 2 unmerging.
    pub run: u64,
    pub pages_to_scan: u64,
    pub sleep_ms: u64,
    /// Page mappings that share a merged page: the pages saved.
    pub pages_sharing: u64,
}

/// A KSM sysfs directory (the machine's, or a copy in tests).
#[derive(Clone, Debug)]
pub struct KsmSysfs {
    dir: PathBuf,
}

impl KsmSysfs {
    pub fn new(dir: impl Into<PathBuf>) -> KsmSysfs {
        KsmSysfs { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn read(&self) -> Result<KsmState, HostError> {
        let number = |name: &str| -> Result<u64, HostError> {
            let path = self.dir.join(name);
            let text = read(&path)?;
            text.trim().parse().map_err(|_| {
                HostError::parse(&path, 1, format!("`{}` is not a number", text.trim()))
            })
        };
        Ok(KsmState {
            run: number("run")?,
            pages_to_scan: number("pages_to_scan")?,
            sleep_ms: number("sleep_millisecs")?,
            pages_sharing: number("pages_sharing")?,
        })
    }

    /// Applies `tuning`: the tunables first, then `run`, so ksmd never starts with the old
    /// ones. Stopping leaves the tunables and what was merged as they are.
    pub fn apply(&self, tuning: KsmTuning) -> Result<(), HostError> {
        match tuning {
            KsmTuning::Stop => write(&self.dir.join("run"), "0"),
            KsmTuning::Run {
                sleep_ms,
                pages_to_scan,
            } => {
                write(&self.dir.join("sleep_millisecs"), &sleep_ms.to_string())?;
                write(&self.dir.join("pages_to_scan"), &pages_to_scan.to_string())?;
                write(&self.dir.join("run"), "1")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(run: &str) -> (tempfile::TempDir, KsmSysfs) {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, value) in [
            ("run", run),
            ("pages_to_scan", "100\n"),
            ("sleep_millisecs", "20\n"),
            ("pages_sharing", "4096\n"),
        ] {
            std::fs::write(dir.path().join(name), value).expect("write");
        }
        let ksm = KsmSysfs::new(dir.path());
        (dir, ksm)
    }

    #[test]
    fn reads_and_applies_a_tuning() {
        let (_dir, ksm) = fake("0\n");
        let state = ksm.read().expect("reads");
        assert_eq!(
            state,
            KsmState {
                run: 0,
                pages_to_scan: 100,
                sleep_ms: 20,
                pages_sharing: 4096
            }
        );
        ksm.apply(KsmTuning::Run {
            sleep_ms: 40,
            pages_to_scan: 400,
        })
        .expect("applies");
        let state = ksm.read().expect("reads");
        assert_eq!(
            (state.run, state.pages_to_scan, state.sleep_ms),
            (1, 400, 40)
        );
        ksm.apply(KsmTuning::Stop).expect("stops");
        assert_eq!(ksm.read().expect("reads").run, 0);
    }

    #[test]
    fn a_bad_value_names_the_file() {
        let (dir, ksm) = fake("yes\n");
        let e = ksm.read().expect_err("not a number").to_string();
        assert!(
            e.contains(&dir.path().join("run").display().to_string()),
            "{e}"
        );
        assert!(e.contains("`yes`"), "{e}");
    }
}
