//! Passthrough devices: whether a VM has a device QEMU may refuse to migrate.
//!
//! A VFIO device (`vfio-pci`, `vfio-ccw`, `vfio-ap`, `vfio-platform`, ...) hands real hardware
//! to the guest. Unless its kernel driver supports VFIO migration (QEMU 8.1+, a few NICs and
//! vGPUs), QEMU registers a migration blocker for it and refuses `migrate`. The daemon's
//! escape takes such a VM for one that cannot migrate unless the operator says otherwise.

use serde_json::{Value, json};

use super::QemuVm;
use crate::qmp::QmpError;

impl QemuVm {
    /// The QOM paths of the VM's VFIO devices under `/machine/peripheral` (devices with an
    /// `id=`) and `/machine/peripheral-anon` (devices without one); empty when it has none.
    pub async fn passthrough_devices(&self) -> Result<Vec<String>, QmpError> {
        let mut found = Vec::new();
        for parent in ["/machine/peripheral", "/machine/peripheral-anon"] {
            let v = self
                .client
                .execute("qom-list", Some(json!({ "path": parent })))
                .await?;
            found.extend(
                vfio_children(&v)
                    .into_iter()
                    .map(|name| format!("{parent}/{name}")),
            );
        }
        Ok(found)
    }
}

/// The names of the `child<vfio-…>` entries of a `qom-list` reply (anything else, or a reply
/// of another shape, contributes none).
fn vfio_children(v: &Value) -> Vec<String> {
    let Some(entries) = v.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let name = entry.get("name")?.as_str()?;
            let ty = entry.get("type")?.as_str()?;
            ty.starts_with("child<vfio-").then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_devices_are_found_by_their_qom_type() {
        // The shape of QEMU's reply: properties of the container, one per child device.
        let v = json!([
            {"name": "type", "type": "string"},
            {"name": "balloon0", "type": "child<virtio-balloon-pci>"},
            {"name": "hostdev0", "type": "child<vfio-pci>"},
            {"name": "nic1", "type": "child<virtio-net-pci>"},
            {"name": "ccw0", "type": "child<vfio-ccw>"},
            {"name": "vfio-lookalike", "type": "link<vfio-pci>"}
        ]);
        assert_eq!(vfio_children(&v), vec!["hostdev0", "ccw0"]);
        assert!(
            vfio_children(&json!([{"name": "mem0", "type": "child<virtio-mem-pci>"}])).is_empty()
        );
        assert!(vfio_children(&json!({"not": "a list"})).is_empty());
        assert!(vfio_children(&json!([{"name": 3, "type": "child<vfio-pci>"}, "x"])).is_empty());
    }
}
