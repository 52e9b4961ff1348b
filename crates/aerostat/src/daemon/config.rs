//! `aerostat run --config FILE`: the daemon's configuration, parsed in two stages
//! (raw serde with `deny_unknown_fields`, then `validate()` into typed values), so a
//! misspelt key or a bad unit is an error naming the file, line and key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aerostat_core::{Bytes, Millis, PolicyKind, VmClass};
use serde::Deserialize;

/// A bad config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: RawHost,
    #[serde(default)]
    policy: RawPolicy,
    qemu: RawQemu,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    vm_defaults: RawVm,
    /// Per-VM settings, by VM name (the QMP socket's file stem).
    #[serde(default)]
    vm: BTreeMap<String, RawVm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    reserve: String,
    #[serde(default)]
    cgroup: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQemu {
    qmp_glob: String,
    /// Guest statistics polling interval set on every VM (default 2s).
    #[serde(default)]
    stats_interval: Option<String>,
    /// Timeout of one QMP command (default 2s).
    #[serde(default)]
    command_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default)]
    listen: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    #[serde(default)]
    min: Option<String>,
    #[serde(default)]
    overhead: Option<String>,
    #[serde(default)]
    priority: Option<f64>,
    #[serde(default)]
    class: Option<VmClass>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub reserve: Bytes,
    pub cgroup: Option<PathBuf>,
    pub policy: PolicyKind,
    pub interval: Millis,
    pub qmp_glob: String,
    pub stats_interval_s: u32,
    pub command_timeout: Millis,
    pub listen: Option<SocketAddr>,
    pub defaults: VmSettings,
    pub vms: BTreeMap<String, VmSettings>,
}

/// What the operator says about a VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSettings {
    /// Floor: the balloon never takes the guest below this.
    pub min: Bytes,
    /// Host memory the VM costs beyond its guest memory (QEMU itself, page tables).
    pub overhead: Bytes,
    pub priority: f64,
    pub class: VmClass,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        let bytes = |key: &str, v: &str| -> Result<Bytes, ConfigError> {
            v.parse().map_err(|e| invalid(format!("`{key}`: {e}")))
        };
        let millis = |key: &str, v: &str| -> Result<Millis, ConfigError> {
            v.parse().map_err(|e| invalid(format!("`{key}`: {e}")))
        };
        let reserve = bytes("host.reserve", &raw.host.reserve)?;
        let policy = match raw.policy.name.as_deref() {
            None => PolicyKind::Aerostat,
            Some(n) => n
                .parse()
                .map_err(|e| invalid(format!("`policy.name`: {e}")))?,
        };
        let interval = match raw.policy.interval.as_deref() {
            None => policy.native_interval(),
            Some(v) => millis("policy.interval", v)?,
        };
        if interval < Millis(100) || interval > Millis::secs(600) {
            return Err(invalid(
                "`policy.interval`: must be between 100ms and 10m".into(),
            ));
        }
        let stats_interval = match raw.qemu.stats_interval.as_deref() {
            None => Millis::secs(2),
            Some(v) => millis("qemu.stats_interval", v)?,
        };
        if stats_interval < Millis::secs(1) || stats_interval > Millis::secs(3600) {
            return Err(invalid(
                "`qemu.stats_interval`: must be between 1s and 1h (whole seconds)".into(),
            ));
        }
        let command_timeout = match raw.qemu.command_timeout.as_deref() {
            None => Millis::secs(2),
            Some(v) => millis("qemu.command_timeout", v)?,
        };
        if command_timeout < Millis(50) || command_timeout > Millis::secs(60) {
            return Err(invalid(
                "`qemu.command_timeout`: must be between 50ms and 60s".into(),
            ));
        }
        if raw.qemu.qmp_glob.trim().is_empty() {
            return Err(invalid("`qemu.qmp_glob`: must not be empty".into()));
        }
        glob::Pattern::new(&raw.qemu.qmp_glob)
            .map_err(|e| invalid(format!("`qemu.qmp_glob`: {e}")))?;
        let listen = match raw.api.listen.as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            Some("" | "off") => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|e| invalid(format!("`api.listen`: `{v}`: {e}")))?,
            ),
        };
        let base = VmSettings {
            min: Bytes::mib(256),
            overhead: Bytes::mib(128),
            priority: 1.0,
            class: VmClass::General,
        };
        let settle =
            |key: &str, raw: &RawVm, base: &VmSettings| -> Result<VmSettings, ConfigError> {
                let priority = raw.priority.unwrap_or(base.priority);
                if !(priority.is_finite() && priority > 0.0) {
                    return Err(invalid(format!(
                        "`{key}.priority`: must be a positive number"
                    )));
                }
                Ok(VmSettings {
                    min: match &raw.min {
                        Some(v) => bytes(&format!("{key}.min"), v)?,
                        None => base.min,
                    },
                    overhead: match &raw.overhead {
                        Some(v) => bytes(&format!("{key}.overhead"), v)?,
                        None => base.overhead,
                    },
                    priority,
                    class: raw.class.unwrap_or(base.class),
                })
            };
        let defaults = settle("vm_defaults", &raw.vm_defaults, &base)?;
        let mut vms = BTreeMap::new();
        for (name, v) in &raw.vm {
            vms.insert(name.clone(), settle(&format!("vm.{name}"), v, &defaults)?);
        }
        Ok(Config {
            reserve,
            cgroup: raw.host.cgroup,
            policy,
            interval,
            qmp_glob: raw.qemu.qmp_glob,
            stats_interval_s: (stats_interval.0 / 1000) as u32,
            command_timeout,
            listen,
            defaults,
            vms,
        })
    }

    /// The settings of VM `name`: its own table, else `[vm_defaults]`.
    pub fn vm(&self, name: &str) -> &VmSettings {
        self.vms.get(name).unwrap_or(&self.defaults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../docs/examples/aerostat.toml");

    #[test]
    fn documented_example_parses() {
        let c = Config::parse(EXAMPLE, Path::new("aerostat.toml")).expect("example is valid");
        assert_eq!(c.reserve, Bytes::mib(512));
        assert_eq!(c.interval, Millis::secs(2));
        assert_eq!(c.listen, Some("127.0.0.1:9464".parse().expect("addr")));
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let text =
            "[host]\nreserve = \"512MiB\"\nreserv = \"1GiB\"\n[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n";
        let e = Config::parse(text, Path::new("a.toml"))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("reserv") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_units_name_the_field() {
        let text = "[host]\nreserve = \"512MB\"\n[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n";
        let e = Config::parse(text, Path::new("a.toml"))
            .expect_err("bad unit")
            .to_string();
        assert!(e.contains("host.reserve") && e.contains("MB"), "{e}");
        let text = "[host]\nreserve = \"512MiB\"\n[policy]\nname = \"magic\"\n[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n";
        let e = Config::parse(text, Path::new("a.toml"))
            .expect_err("bad policy")
            .to_string();
        assert!(e.contains("policy.name"), "{e}");
    }
}
