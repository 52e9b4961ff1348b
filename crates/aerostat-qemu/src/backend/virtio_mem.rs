//! virtio-mem: list devices, change a device's requested size.

use aerostat_core::Bytes;
use serde_json::{Value, json};

use super::json::{opt_str, opt_u64, req_str, req_u64};
use super::{QemuVm, check_qemu_id};
use crate::qmp::QmpError;

/// One virtio-mem device as `query-memory-devices` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioMemDevice {
    /// The device's `id=`; `None` for a device created without one (it cannot be resized by id).
    pub id: Option<String>,
    /// QOM path of the memory backend, e.g. `/objects/vmem0`.
    pub memdev: String,
    /// Memory currently plugged (what the guest can use once it onlined it).
    pub size: Bytes,
    /// What the host asked for; the guest driver moves `size` toward it.
    pub requested_size: Bytes,
    /// The backend's size: the most the device can ever plug.
    pub max_size: Bytes,
    /// Plug/unplug granularity; requested sizes must be multiples of it.
    pub block_size: Bytes,
    pub node: u32,
    /// Guest-physical start address of the device's region.
    pub memaddr: u64,
}

impl QemuVm {
    /// The VM's virtio-mem devices (other memory devices, DIMMs and the like, are skipped).
    pub async fn query_memory_devices(&self) -> Result<Vec<VirtioMemDevice>, QmpError> {
        let v = self.client.execute("query-memory-devices", None).await?;
        parse_memory_devices(&v)
    }

    /// Sets the `requested-size` of the virtio-mem device with `id=<id>` (QOM
    /// `/machine/peripheral/<id>`). QEMU refuses sizes that are not a multiple of the block
    /// size or exceed the maximum; the guest then plugs or unplugs toward it (guest Linux ≥ 5.8,
    /// booted with `memhp_default_state=online_movable` to be able to unplug).
    pub async fn set_virtio_mem_requested(&self, id: &str, size: Bytes) -> Result<(), QmpError> {
        check_qemu_id(id)?;
        self.client
            .execute(
                "qom-set",
                Some(json!({
                    "path": format!("/machine/peripheral/{id}"),
                    "property": "requested-size",
                    "value": size.0,
                })),
            )
            .await?;
        Ok(())
    }
}

/// Decodes the virtio-mem entries of a `query-memory-devices` reply.
pub fn parse_memory_devices(v: &Value) -> Result<Vec<VirtioMemDevice>, QmpError> {
    let Some(list) = v.as_array() else {
        return Err(QmpError::protocol(
            "query-memory-devices: expected an array",
        ));
    };
    let what = "query-memory-devices virtio-mem entry";
    let mut out = Vec::new();
    for entry in list {
        if entry.get("type").and_then(Value::as_str) != Some("virtio-mem") {
            continue;
        }
        let Some(d) = entry.get("data").and_then(Value::as_object) else {
            return Err(QmpError::protocol(format!("{what}: no `data` object")));
        };
        out.push(VirtioMemDevice {
            id: opt_str(d, "id"),
            memdev: req_str(d, "memdev", what)?,
            size: Bytes(req_u64(d, "size", what)?),
            requested_size: Bytes(req_u64(d, "requested-size", what)?),
            max_size: Bytes(req_u64(d, "max-size", what)?),
            block_size: Bytes(req_u64(d, "block-size", what)?),
            node: opt_u64(d, "node")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            memaddr: opt_u64(d, "memaddr").unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu10_reply() {
        // QEMU 10.0.2, paused before the guest ran: nothing plugged yet.
        let v: Value = serde_json::from_str(
            r#"[{"type": "virtio-mem", "data": {"memdev": "/objects/vmem0", "memaddr": 4294967296, "block-size": 2097152, "size": 0, "node": 0, "max-size": 1073741824, "requested-size": 134217728, "id": "vm0"}},
                {"type": "dimm", "data": {"slot": 0}}]"#,
        )
        .expect("sample");
        let devs = parse_memory_devices(&v).expect("parses");
        assert_eq!(
            devs,
            vec![VirtioMemDevice {
                id: Some("vm0".into()),
                memdev: "/objects/vmem0".into(),
                size: Bytes(0),
                requested_size: Bytes::mib(128),
                max_size: Bytes::gib(1),
                block_size: Bytes::mib(2),
                node: 0,
                memaddr: 4 << 30,
            }]
        );
    }

    #[test]
    fn missing_sizes_are_errors_not_zeros() {
        let v = json!([{"type": "virtio-mem", "data": {"memdev": "/objects/m", "size": 0}}]);
        let e = parse_memory_devices(&v).expect_err("incomplete");
        assert!(e.to_string().contains("requested-size"), "{e}");
        assert!(parse_memory_devices(&json!({})).is_err());
        assert!(parse_memory_devices(&json!([{"type": "virtio-mem"}])).is_err());
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_qemu_id("vm0").is_ok());
        assert!(check_qemu_id("mem.dev-1_a").is_ok());
        for bad in ["", "0vm", "a/../b", "vm 0", "vm[0]", &"a".repeat(200)] {
            assert!(check_qemu_id(bad).is_err(), "{bad}");
        }
    }
}
