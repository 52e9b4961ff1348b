//! Run state (`query-status`).

use super::QemuVm;
use super::json::{object, req_bool, req_str};
use crate::qmp::QmpError;

/// QEMU's run state. Values this version does not know are kept as `Other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    Debug,
    Inmigrate,
    InternalError,
    IoError,
    Paused,
    Postmigrate,
    /// Started with `-S` and not yet continued.
    Prelaunch,
    FinishMigrate,
    RestoreVm,
    Running,
    SaveVm,
    Shutdown,
    Suspended,
    Watchdog,
    GuestPanicked,
    Colo,
    Other(String),
}

impl RunState {
    pub fn parse(s: &str) -> RunState {
        match s {
            "debug" => RunState::Debug,
            "inmigrate" => RunState::Inmigrate,
            "internal-error" => RunState::InternalError,
            "io-error" => RunState::IoError,
            "paused" => RunState::Paused,
            "postmigrate" => RunState::Postmigrate,
            "prelaunch" => RunState::Prelaunch,
            "finish-migrate" => RunState::FinishMigrate,
            "restore-vm" => RunState::RestoreVm,
            "running" => RunState::Running,
            "save-vm" => RunState::SaveVm,
            "shutdown" => RunState::Shutdown,
            "suspended" => RunState::Suspended,
            "watchdog" => RunState::Watchdog,
            "guest-panicked" => RunState::GuestPanicked,
            "colo" => RunState::Colo,
            other => RunState::Other(other.to_string()),
        }
    }
}

/// `query-status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStatus {
    pub status: RunState,
    /// Whether the vCPUs run (QEMU's own flag; `Running` and `running` agree in practice).
    pub running: bool,
}

impl QemuVm {
    pub async fn query_status(&self) -> Result<VmStatus, QmpError> {
        let v = self.client.execute("query-status", None).await?;
        let obj = object(&v, "query-status")?;
        Ok(VmStatus {
            status: RunState::parse(&req_str(obj, "status", "query-status")?),
            running: req_bool(obj, "running", "query-status")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_states_are_kept() {
        assert_eq!(RunState::parse("prelaunch"), RunState::Prelaunch);
        assert_eq!(RunState::parse("postmigrate"), RunState::Postmigrate);
        assert_eq!(
            RunState::parse("new-in-qemu-11"),
            RunState::Other("new-in-qemu-11".into())
        );
    }
}
