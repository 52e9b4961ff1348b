//! The QEMU backend: typed operations on one VM over its QMP connection.
//!
//! Mechanism only: every method does exactly what it is told and reports what QEMU said.
//! Choosing targets, rates and when to migrate is the core's job.
//!
//! Replies are decoded leniently where QEMU may add or rename things between versions
//! (unknown fields are ignored, unknown enum values are kept as `Other(..)`), and strictly
//! where a missing field would be a lie (`actual`, migration byte counts): those are
//! `Protocol` errors, never zeros.

mod balloon;
mod blockstats;
mod events;
mod hotplug;
mod json;
mod migration;
mod process;
mod status;
mod virtio_mem;

use std::path::Path;
use std::sync::Mutex;

use crate::qmp::{QmpClient, QmpError, QmpOptions};

pub use balloon::{
    MAX_GUEST_COUNTER, MAX_GUEST_CUMULATIVE_BYTES, MAX_GUEST_MEMORY, parse_guest_stats,
};
pub use blockstats::{DiskStats, parse_disk_stats};
pub use events::VmEvent;
pub use hotplug::{PLUG_COMMANDS, PlugCommand};
pub use migration::{
    DirtyRateInfo, DirtyRateStatus, MigrationCapability, MigrationInfo, MigrationParameters,
    MigrationStatus, RamStats, parse_dirty_rate, parse_migration_info,
};
pub use process::{
    GuestRamPages, ProcessMemory, clear_referenced, is_qemu, is_qemu_comm, parse_process_memory,
    parse_smaps_ram, parse_vm_rss, read_guest_ram_pages, read_guest_ram_rss, read_process_memory,
    read_rss,
};
pub use status::{RunState, VmStatus};
pub use virtio_mem::{VirtioMemDevice, parse_memory_devices};

/// QEMU's own rule for ids (`id_wellformed`): a letter, then letters, digits, `-`, `.`, `_`.
/// Every id aerostat sends (a device to resize or unplug) or reads from an operator is checked
/// by it, so that an id cannot name some other QOM path (`a/../b`).
pub fn is_qemu_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && id.len() <= 128
}

/// Checking ids before they go out keeps a configured id from naming some other QOM path
/// (`a/../b`).
pub(super) fn check_qemu_id(id: &str) -> Result<(), QmpError> {
    if is_qemu_id(id) {
        Ok(())
    } else {
        Err(QmpError::InvalidArgument {
            detail: format!("`{id}` is not a QEMU device id"),
        })
    }
}

/// One QEMU VM, reached over its QMP socket.
#[derive(Debug)]
pub struct QemuVm {
    client: QmpClient,
    /// QOM path of the virtio-balloon device, found once and then reused.
    balloon_path: Mutex<Option<String>>,
}

impl QemuVm {
    /// Connects to the VM's QMP socket with default deadlines.
    pub async fn connect(path: impl AsRef<Path>) -> Result<QemuVm, QmpError> {
        Ok(QemuVm::new(QmpClient::connect(path).await?))
    }

    /// Connects with explicit deadlines.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        options: QmpOptions,
    ) -> Result<QemuVm, QmpError> {
        Ok(QemuVm::new(QmpClient::connect_with(path, options).await?))
    }

    /// Wraps an already negotiated client.
    pub fn new(client: QmpClient) -> QemuVm {
        QemuVm {
            client,
            balloon_path: Mutex::new(None),
        }
    }

    /// The underlying client, for events and for commands this type does not wrap.
    pub fn client(&self) -> &QmpClient {
        &self.client
    }

    /// The QEMU process's pid (`SO_PEERCRED` on the QMP socket).
    pub fn pid(&self) -> Option<u32> {
        self.client.peer_pid()
    }

    /// Resident memory of the guest's `ram`-sized RAM mapping inside QEMU (see
    /// [`read_guest_ram_rss`]): an upper bound on the guest memory that is not zero.
    pub fn query_guest_ram_rss(
        &self,
        ram: aerostat_core::Bytes,
    ) -> Result<Option<aerostat_core::Bytes>, QmpError> {
        match self.pid() {
            Some(pid) => read_guest_ram_rss(pid, ram),
            None => Ok(None),
        }
    }

    /// The guest RAM mapping's pages as the last coldness window left them, then a new
    /// window begins ([`clear_referenced`]): `idle()` of the result is guest memory nobody
    /// touched since the previous call. `None` without a pid or a `ram`-sized mapping.
    pub fn measure_coldness(
        &self,
        ram: aerostat_core::Bytes,
    ) -> Result<Option<GuestRamPages>, QmpError> {
        let Some(pid) = self.pid() else {
            return Ok(None);
        };
        let pages = read_guest_ram_pages(pid, ram)?;
        clear_referenced(pid)?;
        Ok(pages)
    }

    /// Memory the QEMU process has touched (`VmRSS + VmSwap + HugetlbPages` in
    /// `/proc/PID/status`): a host-side fact.
    pub fn query_rss(&self) -> Result<aerostat_core::Bytes, QmpError> {
        self.query_process_memory().map(|m| m.touched)
    }

    /// The QEMU process's memory: what it touched, and what of it the host swapped out.
    pub fn query_process_memory(&self) -> Result<ProcessMemory, QmpError> {
        let pid = self.pid().ok_or_else(|| {
            QmpError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the QMP peer's pid is unknown (SO_PEERCRED failed)",
            ))
        })?;
        read_process_memory(pid)
    }
}

#[cfg(test)]
mod tests;
