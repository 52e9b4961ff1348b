//! The one error type of the host probes.

use std::io;
use std::path::PathBuf;

/// Why a host probe failed. Every variant names the file; parse errors also name the line.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line we need did not parse. `line` counts from 1.
    #[error("{path}:{line}: {detail}")]
    Parse {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    /// A key we need is not in the file (e.g. an old kernel without `MemAvailable`).
    #[error("{path}: no `{key}`")]
    Missing { path: PathBuf, key: &'static str },
    /// No usable memory controller here (e.g. cgroup v2 without `memory` enabled).
    #[error("{path}: {detail}")]
    Unsupported { path: PathBuf, detail: String },
}

impl HostError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> HostError {
        HostError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(
        path: &std::path::Path,
        line: usize,
        detail: impl Into<String>,
    ) -> HostError {
        HostError::Parse {
            path: path.to_path_buf(),
            line,
            detail: detail.into(),
        }
    }
}

/// Reads a whole (small) file, naming it in the error.
pub(crate) fn read(path: &std::path::Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|e| HostError::io(path, e))
}

/// Writes a control file, naming it in the error.
pub(crate) fn write(path: &std::path::Path, value: &str) -> Result<(), HostError> {
    std::fs::write(path, value).map_err(|e| HostError::io(path, e))
}
