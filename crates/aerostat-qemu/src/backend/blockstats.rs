//! A guest disk's I/O counters (`query-blockstats`): what QEMU itself read from the disk for
//! the guest — a host-side fact, unlike anything the guest reports about itself.
//!
//! aerostat reads one disk per guest: the one the operator declares the guest swaps on
//! (`vm.NAME.swap_disk`). Its reads are the guest's swap-ins seen from the host, its writes
//! the guest's swap-outs.

use aerostat_core::Bytes;
use serde_json::Value;

use super::QemuVm;
use super::json::req_u64;
use crate::qmp::QmpError;

/// One guest disk's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStats {
    /// The drive's name (`-drive …,id=NAME`); empty for a `-blockdev` drive (libvirt's).
    pub device: String,
    /// The block node's name (`-blockdev …,node-name=NAME`; QEMU makes up `#block…` ones).
    pub node_name: Option<String>,
    /// The device the disk is attached to, as QEMU names it: its id, or a QOM path —
    /// `/machine/peripheral/ID/virtio-backend` for a virtio-blk device with `id=ID`.
    pub qdev: Option<String>,
    /// Bytes the guest read from the disk since QEMU started.
    pub read: Bytes,
    pub read_operations: u64,
    /// Bytes the guest wrote to the disk since QEMU started (`None`: not reported).
    pub written: Option<Bytes>,
}

impl DiskStats {
    /// Whether `name` names this disk: the drive's name, its block node's name, or the id
    /// of the device it is attached to.
    pub fn is(&self, name: &str) -> bool {
        if name.is_empty() {
            return false;
        }
        let device_id = self.qdev.as_deref().map(|q| {
            q.strip_prefix("/machine/peripheral/")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or(q)
        });
        self.device == name || self.node_name.as_deref() == Some(name) || device_id == Some(name)
    }
}

impl QemuVm {
    /// The counters of every disk attached to a device.
    pub async fn query_disk_stats(&self) -> Result<Vec<DiskStats>, QmpError> {
        let v = self.client.execute("query-blockstats", None).await?;
        parse_disk_stats(&v)
    }
}

/// Decodes a `query-blockstats` reply. Entries without a device (a block node no device
/// uses) are skipped; an entry without its read counters is an error, not a zero, and so is
/// a write counter that is there but not a count.
pub fn parse_disk_stats(v: &Value) -> Result<Vec<DiskStats>, QmpError> {
    let list = v
        .as_array()
        .ok_or_else(|| QmpError::protocol("query-blockstats: expected an array"))?;
    let what = "query-blockstats entry";
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let device = entry
            .get("device")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let qdev = entry
            .get("qdev")
            .and_then(Value::as_str)
            .map(str::to_string);
        let node_name = entry
            .get("node-name")
            .and_then(Value::as_str)
            .map(str::to_string);
        if device.is_empty() && qdev.is_none() {
            continue;
        }
        let stats = entry
            .get("stats")
            .and_then(Value::as_object)
            .ok_or_else(|| QmpError::protocol(format!("{what}: no `stats` object")))?;
        out.push(DiskStats {
            device,
            node_name,
            qdev,
            read: Bytes(req_u64(stats, "rd_bytes", what)?),
            read_operations: req_u64(stats, "rd_operations", what)?,
            written: stats
                .get("wr_bytes")
                .map(|_| req_u64(stats, "wr_bytes", what).map(Bytes))
                .transpose()?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// QEMU 10.0.2 (`query-blockstats` of one guest): a `-drive id=swap0` on a virtio-blk device
    /// without an id; a `-drive id=drv3` on one with `id=vd3`; a `-blockdev node-name=d2` on
    /// one with `id=vd2`, as libvirt attaches disks (counters trimmed), and a node no device
    /// uses.
    fn reply() -> Value {
        json!([
            {"device": "swap0", "node-name": "#block122",
             "qdev": "/machine/peripheral-anon/device[0]/virtio-backend",
             "stats": {"rd_bytes": 4608, "rd_operations": 2, "wr_bytes": 8192, "account_invalid": true},
             "parent": {"stats": {"rd_bytes": 0, "rd_operations": 0}}},
            {"device": "drv3", "node-name": "#block337",
             "qdev": "/machine/peripheral/vd3/virtio-backend",
             "stats": {"rd_bytes": 4608, "rd_operations": 2}},
            {"device": "", "node-name": "d2", "qdev": "/machine/peripheral/vd2/virtio-backend",
             "stats": {"rd_bytes": 1048576, "rd_operations": 9, "wr_bytes": 0}},
            {"device": "", "node-name": "lonely", "stats": {"rd_bytes": 1, "rd_operations": 1}}
        ])
    }

    #[test]
    fn disks_are_found_by_drive_node_or_device_name() {
        let disks = parse_disk_stats(&reply()).expect("parses");
        assert_eq!(disks.len(), 3, "the node without a device is skipped");
        assert!(disks[0].is("swap0"));
        assert_eq!(disks[0].read, Bytes(4608));
        assert_eq!(disks[0].read_operations, 2);
        assert_eq!(disks[0].written, Some(Bytes(8192)));
        assert_eq!(disks[1].written, None, "not reported");
        assert!(disks[1].is("drv3") && disks[1].is("vd3"));
        assert!(disks[2].is("vd2") && disks[2].is("d2"));
        assert!(!disks[2].is(""), "an empty drive name names nothing");
        assert!(!disks[2].is("virtio-backend") && !disks[0].is("device[0]"));
        assert_eq!(disks[2].read, Bytes::mib(1));
    }

    #[test]
    fn counters_that_are_missing_or_wrong_are_errors() {
        for bad in [
            json!({"device": "swap0"}),
            json!([{"device": "swap0", "stats": {"rd_operations": 1}}]),
            json!([{"device": "swap0", "stats": {"rd_bytes": -1, "rd_operations": 1}}]),
            json!([{"device": "swap0", "stats": {"rd_bytes": 1, "rd_operations": 1, "wr_bytes": "8"}}]),
            json!([{"device": "swap0"}]),
        ] {
            assert!(parse_disk_stats(&bad).is_err(), "{bad}");
        }
    }
}
