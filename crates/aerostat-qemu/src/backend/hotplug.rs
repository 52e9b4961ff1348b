//! Device hot-unplug and hot-plug, for the devices QEMU will not migrate.
//!
//! A passthrough device (a VFIO NIC or GPU, most of them without migration support) blocks a
//! live migration. The usual way round it — OpenStack Nova's for SR-IOV ports — is to unplug
//! the device from the guest before the migration and plug an equivalent one in on the
//! destination after it: the guest's driver quiesces the device and releases its pinned DMA
//! memory when the guest ejects it. This file is the mechanism: `device_del` and a wait until
//! the guest has let go, and the "-add" commands that put a device back.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{QemuVm, check_qemu_id};
use crate::qmp::QmpError;

/// How often [`QemuVm::wait_device_gone`] looks.
const GONE_POLL: Duration = Duration::from_millis(100);

/// The QMP commands a plug step may run: the ones that create a device or what a device
/// needs (a block node, a memory backend, a network or character backend). A configured step
/// can add things to a VM; it cannot stop, quit or reconfigure it.
pub const PLUG_COMMANDS: [&str; 5] = [
    "device_add",
    "object-add",
    "blockdev-add",
    "netdev_add",
    "chardev-add",
];

/// One QMP command that plugs a device (or what it needs) back in, as an operator wrote it:
/// `{"execute": "device_add", "arguments": {"driver": "vfio-pci", "host": "0000:03:00.1",
/// "id": "nic0"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct PlugCommand {
    pub execute: String,
    pub arguments: Map<String, Value>,
}

impl PlugCommand {
    /// Checks an operator's command: an object with `execute` (one of [`PLUG_COMMANDS`]) and an
    /// `arguments` object, nothing else. The error says what is wrong, for the caller to put
    /// behind the field's name.
    pub fn from_value(v: &Value) -> Result<PlugCommand, String> {
        let Some(obj) = v.as_object() else {
            return Err("expected an object with `execute` and `arguments`".into());
        };
        if let Some(k) = obj.keys().find(|k| *k != "execute" && *k != "arguments") {
            return Err(format!(
                "unknown key `{k}` (a step has `execute` and `arguments`)"
            ));
        }
        let execute = match obj.get("execute") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err("`execute` must be a string".into()),
            None => return Err("`execute` is missing".into()),
        };
        if !PLUG_COMMANDS.contains(&execute.as_str()) {
            return Err(format!(
                "`{execute}` is not a plug command (use one of {})",
                PLUG_COMMANDS.join(", ")
            ));
        }
        let arguments = match obj.get("arguments") {
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("`arguments` must be an object".into()),
            None => return Err("`arguments` is missing".into()),
        };
        Ok(PlugCommand { execute, arguments })
    }

    /// The device or object the step creates, for messages: its `id` (or `node-name`).
    pub fn names(&self) -> String {
        let name = ["id", "node-name", "qom-id"]
            .iter()
            .find_map(|k| self.arguments.get(*k).and_then(Value::as_str));
        match name {
            Some(n) => format!("{} {n}", self.execute),
            None => self.execute.clone(),
        }
    }
}

impl QemuVm {
    /// Asks QEMU to unplug the device with `id=<id>`. For a PCI device this only asks the
    /// guest to eject it (ACPI or PCIe native hot-plug); the device is gone once the guest let
    /// go ([`QemuVm::wait_device_gone`]). A guest without a hot-plug driver never does.
    pub async fn device_del(&self, id: &str) -> Result<(), QmpError> {
        check_qemu_id(id)?;
        self.client
            .execute("device_del", Some(json!({ "id": id })))
            .await?;
        Ok(())
    }

    /// Whether the VM has a device with `id=<id>` (a child of `/machine/peripheral`).
    pub async fn has_device(&self, id: &str) -> Result<bool, QmpError> {
        check_qemu_id(id)?;
        let v = self
            .client
            .execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))
            .await?;
        let list = v
            .as_array()
            .ok_or_else(|| QmpError::protocol("qom-list: expected an array"))?;
        Ok(list.iter().any(|p| {
            p.get("name").and_then(Value::as_str) == Some(id)
                && p.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.starts_with("child<"))
        }))
    }

    /// Waits until the device `id` is gone, polling `qom-list` (not the `DEVICE_DELETED`
    /// event: another reader of this connection may take it). `Ok(false)` if it is still there
    /// after `timeout`.
    pub async fn wait_device_gone(&self, id: &str, timeout: Duration) -> Result<bool, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.has_device(id).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(GONE_POLL).await;
        }
    }

    /// Runs one plug step.
    pub async fn plug(&self, step: &PlugCommand) -> Result<(), QmpError> {
        self.client
            .execute(&step.execute, Some(Value::Object(step.arguments.clone())))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plug_step_is_one_of_the_add_commands_with_its_arguments() {
        let step = PlugCommand::from_value(&json!({
            "execute": "device_add",
            "arguments": {"driver": "nvme", "id": "nv0", "drive": "nvd", "serial": "a1"}
        }))
        .expect("valid");
        assert_eq!(step.execute, "device_add");
        assert_eq!(step.names(), "device_add nv0");
        let node = PlugCommand::from_value(&json!({
            "execute": "blockdev-add",
            "arguments": {"driver": "raw", "node-name": "nvd", "file": {"driver": "file", "filename": "/x"}}
        }))
        .expect("valid");
        assert_eq!(node.names(), "blockdev-add nvd");
    }

    #[test]
    fn a_plug_step_cannot_be_any_other_command_or_shape() {
        for (v, says) in [
            (
                json!({"execute": "quit", "arguments": {}}),
                "not a plug command",
            ),
            (
                json!({"execute": "device_del", "arguments": {"id": "a"}}),
                "not a plug command",
            ),
            (json!({"arguments": {}}), "`execute` is missing"),
            (json!({"execute": "device_add"}), "`arguments` is missing"),
            (
                json!({"execute": "device_add", "arguments": []}),
                "must be an object",
            ),
            (json!({"execute": 3, "arguments": {}}), "must be a string"),
            (
                json!({"execute": "device_add", "arguments": {}, "id": 1}),
                "unknown key `id`",
            ),
            (json!(["device_add"]), "expected an object"),
        ] {
            let e = PlugCommand::from_value(&v).expect_err("refused");
            assert!(e.contains(says), "{v}: {e}");
        }
    }
}
