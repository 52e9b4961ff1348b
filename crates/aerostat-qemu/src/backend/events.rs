//! Typed view of the QMP events the controller cares about.

use aerostat_core::Bytes;
use serde_json::Value;

use super::migration::MigrationStatus;
use crate::qmp::QmpEvent;

/// A QMP event, decoded when it is one the controller reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// The balloon's `actual` changed (the guest driver moved).
    BalloonChange {
        actual: Bytes,
    },
    /// QEMU is shutting down (`guest`: the guest asked for it).
    Shutdown {
        guest: bool,
        reason: String,
    },
    Stop,
    Resume,
    /// Migration state changed. QEMU sends these only when the `events` migration capability
    /// is on ([`super::MigrationCapability::Events`]).
    Migration {
        status: MigrationStatus,
    },
    /// A pre-copy pass began (`pass` counts from 1); also needs the `events` capability.
    /// "Switch to post-copy after the first pass" keys off this.
    MigrationPass {
        pass: u64,
    },
    /// A virtio-mem device's plugged size changed.
    MemoryDeviceSizeChange {
        id: Option<String>,
        size: Bytes,
    },
    /// Any other event, or one of the above whose data did not decode.
    Other {
        name: String,
    },
}

impl From<&QmpEvent> for VmEvent {
    fn from(ev: &QmpEvent) -> VmEvent {
        decode(ev).unwrap_or_else(|| VmEvent::Other {
            name: ev.name.clone(),
        })
    }
}

fn decode(ev: &QmpEvent) -> Option<VmEvent> {
    let data = &ev.data;
    Some(match ev.name.as_str() {
        "BALLOON_CHANGE" => VmEvent::BalloonChange {
            actual: Bytes(data.get("actual")?.as_u64()?),
        },
        "SHUTDOWN" => VmEvent::Shutdown {
            guest: data.get("guest").and_then(Value::as_bool).unwrap_or(false),
            reason: data
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        },
        "STOP" => VmEvent::Stop,
        "RESUME" => VmEvent::Resume,
        "MIGRATION" => VmEvent::Migration {
            status: MigrationStatus::parse(data.get("status")?.as_str()?),
        },
        "MIGRATION_PASS" => VmEvent::MigrationPass {
            pass: data.get("pass")?.as_u64()?,
        },
        "MEMORY_DEVICE_SIZE_CHANGE" => VmEvent::MemoryDeviceSizeChange {
            id: data.get("id").and_then(Value::as_str).map(str::to_string),
            size: Bytes(data.get("size")?.as_u64()?),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(name: &str, data: Value) -> QmpEvent {
        QmpEvent {
            name: name.into(),
            data,
            timestamp: None,
        }
    }

    #[test]
    fn decodes_known_events() {
        assert_eq!(
            VmEvent::from(&ev("BALLOON_CHANGE", json!({"actual": 1024}))),
            VmEvent::BalloonChange {
                actual: Bytes(1024)
            }
        );
        assert_eq!(
            VmEvent::from(&ev(
                "SHUTDOWN",
                json!({"guest": false, "reason": "host-qmp-quit"})
            )),
            VmEvent::Shutdown {
                guest: false,
                reason: "host-qmp-quit".into()
            }
        );
        assert_eq!(VmEvent::from(&ev("STOP", Value::Null)), VmEvent::Stop);
        assert_eq!(
            VmEvent::from(&ev("MIGRATION_PASS", json!({"pass": 2}))),
            VmEvent::MigrationPass { pass: 2 }
        );
        assert_eq!(
            VmEvent::from(&ev("MIGRATION", json!({"status": "postcopy-active"}))),
            VmEvent::Migration {
                status: MigrationStatus::PostcopyActive
            }
        );
        assert_eq!(
            VmEvent::from(&ev(
                "MEMORY_DEVICE_SIZE_CHANGE",
                json!({"id": "vm0", "size": 2097152, "qom-path": "/machine/peripheral/vm0/virtio-backend"})
            )),
            VmEvent::MemoryDeviceSizeChange {
                id: Some("vm0".into()),
                size: Bytes::mib(2)
            }
        );
    }

    #[test]
    fn undecodable_events_are_other() {
        assert_eq!(
            VmEvent::from(&ev("BALLOON_CHANGE", json!({"actual": -1}))),
            VmEvent::Other {
                name: "BALLOON_CHANGE".into()
            }
        );
        assert_eq!(
            VmEvent::from(&ev("NIC_RX_FILTER_CHANGED", json!({}))),
            VmEvent::Other {
                name: "NIC_RX_FILTER_CHANGED".into()
            }
        );
    }
}
