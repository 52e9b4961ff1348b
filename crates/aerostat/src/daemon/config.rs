//! `aerostat run --config FILE`: the daemon's configuration, parsed in two stages
//! (raw serde with `deny_unknown_fields`, then `validate()` into typed values), so a
//! misspelt key or a bad unit is an error naming the file, line and key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aerostat_core::{Bytes, Millis, PolicyKind, VmClass};
use aerostat_sim::input::shorten_quoted;
use aerostat_sim::input::table::{table, tables_by_name};
use aerostat_sim::scenario::Rate;
use serde::Deserialize;

use crate::cmd::migrate::Handoff;

/// A bad config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {}", shorten_quoted(.message))]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // Each section is read from a table only (`input::table`): serde's derive would read
    // `host = ["512MiB"]` field by field.
    #[serde(deserialize_with = "table")]
    host: RawHost,
    #[serde(default, deserialize_with = "table")]
    policy: RawPolicy,
    #[serde(deserialize_with = "table")]
    qemu: RawQemu,
    #[serde(default, deserialize_with = "table")]
    api: RawApi,
    #[serde(default, deserialize_with = "table")]
    vm_defaults: RawVm,
    /// Per-VM settings, by VM name (the QMP socket's file stem).
    #[serde(default, deserialize_with = "tables_by_name")]
    vm: BTreeMap<String, RawVm>,
    #[serde(default, deserialize_with = "table")]
    migration: RawMigration,
    #[serde(default, deserialize_with = "table")]
    ksm: RawKsm,
    #[serde(default, deserialize_with = "table")]
    admission: RawAdmission,
}

/// `[admission]`: what `GET /admit` allows besides the fit (docs/admission.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmission {
    #[serde(default)]
    max_ratio: Option<f64>,
}

/// `[ksm]`: whether aerostat runs the host's KSM (oVirt MoM's KSM policy).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKsm {
    #[serde(default)]
    control: bool,
    #[serde(default)]
    interval: Option<String>,
    /// KSM's sysfs directory (default `/sys/kernel/mm/ksm`).
    #[serde(default)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    #[serde(default)]
    escape: bool,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default)]
    prepare: Option<Vec<String>>,
    #[serde(default)]
    grace: Option<String>,
    #[serde(default)]
    bandwidth: Option<String>,
    #[serde(default)]
    downtime: Option<String>,
    #[serde(default)]
    max_time: Option<String>,
    #[serde(default)]
    thrash_limit: Option<String>,
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
    /// Guest statistics polling interval set on every VM (default: the policy's interval,
    /// rounded up to whole seconds).
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
    #[serde(default)]
    headroom: Option<String>,
    #[serde(default)]
    swap: Option<String>,
    #[serde(default)]
    migratable: Option<bool>,
    #[serde(default)]
    swap_disk: Option<String>,
    #[serde(default)]
    unplug_for_migration: Option<Vec<String>>,
    #[serde(default)]
    replug_after_migration: Option<Vec<serde_json::Value>>,
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
    /// `[migration]`: the memory-pressure escape; `None` when off (the default).
    pub escape: Option<EscapeConfig>,
    /// `[ksm]` with `control = true`; `None` leaves the host's KSM alone (the default).
    pub ksm: Option<KsmConfig>,
    /// `admission.max_ratio`: the overcommit ratio `GET /admit` allows (only guests that can
    /// be resized are overcommitted); `None`: no ratio check.
    pub max_ratio: Option<f64>,
}

/// `[ksm] control = true`: aerostat starts, stops and paces KSM (`aerostat_core::ksm`).
#[derive(Debug, Clone, PartialEq)]
pub struct KsmConfig {
    /// How often (default 10s, MoM's as vdsm runs it).
    pub interval: Millis,
    pub dir: PathBuf,
}

/// `[migration]` with `escape = true`: move a guest away when the host cannot hold them.
#[derive(Debug, Clone, PartialEq)]
pub struct EscapeConfig {
    /// Destination URIs (`tcp:HOST:PORT`), tried in turn.
    pub peers: Vec<String>,
    /// A command (argv) that prepares the destination; see docs/migration.md.
    pub prepare: Option<Vec<String>>,
    /// How long the pressure must last before a guest is moved (default 60s).
    pub grace: Millis,
    pub bandwidth: Bytes,
    pub downtime: Millis,
    pub max_time: Millis,
    /// Host swap-in rate that counts as pressure too (default: off, floors only).
    pub thrash_limit: Option<Bytes>,
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
    /// Memory the `aerostat` policy keeps free in the guest for a burst it has not seen yet
    /// (`VmSample::headroom`); `None`: none beyond the class's headroom.
    pub headroom: Option<Bytes>,
    /// The guest's swap as the operator declares it (`VmSample::guest_swap`). With it the
    /// daemon also measures the guest's cold memory (docs/observation.md, "Coldness"), and
    /// the `aerostat` policy may push cold anonymous memory into that swap. `None`: none.
    pub swap: Option<Bytes>,
    /// The disk the guest swaps on, by its `-drive` id or its device's id: QEMU's reads from it
    /// are the guest's swap-ins seen from the host (`VmSample::swap_disk_read`). `None`: not
    /// declared.
    pub swap_disk: Option<String>,
    /// Whether the escape may live-migrate the VM (`VmSample::migratable`). `None` (the
    /// default): unless QEMU shows it a VFIO device, which QEMU refuses to migrate unless the
    /// device supports it.
    pub migratable: Option<bool>,
    /// Devices QEMU will not migrate, unplugged before an escape moves the guest and plugged
    /// back after it (`unplug_for_migration`, `replug_after_migration`; docs/migration.md,
    /// "Devices QEMU will not migrate").
    pub handoff: Handoff,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = aerostat_sim::input::read_bounded(path, aerostat_sim::input::MAX_TOML_BYTES)
            .map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // A byte-order mark (some Windows editors write one) is not TOML, and invisible.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // Messages start with the key in backticks (`host.reserve`: …); the key's line is
        // added so that every error points into the file.
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: match message
                .strip_prefix('`')
                .and_then(|m| m.split_once('`'))
                .and_then(|(key, _)| key_line(text, key))
            {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            },
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        let bytes = |key: &str, v: &str| -> Result<Bytes, ConfigError> {
            v.parse().map_err(|e| invalid(format!("`{key}`: {e}")))
        };
        // A guest's own sizes: no more than any guest can have (8,000,000 TiB was taken).
        let guest_bytes = |key: &str, v: &str| -> Result<Bytes, ConfigError> {
            let b = bytes(key, v)?;
            if b > aerostat_qemu::backend::MAX_GUEST_MEMORY {
                return Err(invalid(format!(
                    "`{key}`: {b} is more than any guest can have ({})",
                    aerostat_qemu::backend::MAX_GUEST_MEMORY
                )));
            }
            Ok(b)
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
        // By default the guest is polled as often as the policy decides (in whole seconds,
        // QEMU's unit): stats older than the interval are what the policy was not built on
        // (2 s old stats next to a 1 s policy: db-and-batch stalls 15.8 s where it stalls
        // none, docs/benchmarks.md, session 18).
        let stats_interval = match raw.qemu.stats_interval.as_deref() {
            None => Millis::secs(interval.0.div_ceil(1000).max(1)),
            Some(v) => millis("qemu.stats_interval", v)?,
        };
        // QEMU's guest-stats-polling-interval is whole seconds: 1500ms would be cut to 1s.
        if stats_interval < Millis::secs(1)
            || stats_interval > Millis::secs(3600)
            || stats_interval.0 % 1000 != 0
        {
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
            headroom: None,
            swap: None,
            swap_disk: None,
            migratable: None,
            handoff: Handoff::default(),
        };
        let settle =
            |key: &str, raw: &RawVm, base: &VmSettings| -> Result<VmSettings, ConfigError> {
                let priority = raw.priority.unwrap_or(base.priority);
                if let Some(why) = aerostat_core::priority_problem(priority) {
                    return Err(invalid(format!("`{key}.priority`: {why}")));
                }
                Ok(VmSettings {
                    min: match &raw.min {
                        Some(v) => guest_bytes(&format!("{key}.min"), v)?,
                        None => base.min,
                    },
                    overhead: match &raw.overhead {
                        Some(v) => guest_bytes(&format!("{key}.overhead"), v)?,
                        None => base.overhead,
                    },
                    priority,
                    class: raw.class.unwrap_or(base.class),
                    headroom: match &raw.headroom {
                        Some(v) => Some(guest_bytes(&format!("{key}.headroom"), v)?),
                        None => base.headroom,
                    },
                    swap: match &raw.swap {
                        Some(v) => Some(guest_bytes(&format!("{key}.swap"), v)?),
                        None => base.swap,
                    },
                    swap_disk: match &raw.swap_disk {
                        Some(d) if d.is_empty() => {
                            return Err(invalid(format!("`{key}.swap_disk`: empty")));
                        }
                        Some(d) => Some(d.clone()),
                        None => base.swap_disk.clone(),
                    },
                    migratable: raw.migratable.or(base.migratable),
                    handoff: handoff(key, raw, &base.handoff).map_err(invalid)?,
                })
            };
        let defaults = settle("vm_defaults", &raw.vm_defaults, &base)?;
        let mut vms = BTreeMap::new();
        for (name, v) in &raw.vm {
            vms.insert(name.clone(), settle(&format!("vm.{name}"), v, &defaults)?);
        }
        // `[migration]` is checked whether or not the escape is on, so that turning it on
        // later does not reveal an error.
        let escape = {
            let m = &raw.migration;
            let rate = |key: &str, v: &str| -> Result<Bytes, ConfigError> {
                let Rate(b) = v.parse().map_err(|e| invalid(format!("`{key}`: {e}")))?;
                if b.0 == 0 {
                    return Err(invalid(format!("`{key}`: must be more than 0")));
                }
                Ok(b)
            };
            // Named by `migration.escape`, the key the file has (the peers it lacks have
            // no line to point at).
            if m.escape && m.peers.is_empty() && m.prepare.is_none() {
                return Err(invalid(
                    "`migration.escape`: the escape needs at least one peer in `migration.peers` (or a `prepare` command that names one)".into(),
                ));
            }
            if let Some((p, why)) = m
                .peers
                .iter()
                .find_map(|p| peer_problem(p).map(|why| (p, why)))
            {
                return Err(invalid(format!(
                    "`migration.peers`: `{p}` is not a migration URI ({why})"
                )));
            }
            if m.prepare
                .as_ref()
                .is_some_and(|argv| argv.is_empty() || argv[0].is_empty())
            {
                return Err(invalid(
                    "`migration.prepare`: give the command as a non-empty argv list".into(),
                ));
            }
            let opt_millis = |key: &str, v: &Option<String>, default: Millis| match v {
                Some(v) => millis(key, v),
                None => Ok(default),
            };
            let escape = EscapeConfig {
                peers: m.peers.clone(),
                prepare: m.prepare.clone(),
                grace: opt_millis("migration.grace", &m.grace, Millis::secs(60))?,
                bandwidth: match &m.bandwidth {
                    Some(v) => rate("migration.bandwidth", v)?,
                    None => Bytes::mib(128),
                },
                downtime: opt_millis("migration.downtime", &m.downtime, Millis(300))?,
                max_time: opt_millis("migration.max_time", &m.max_time, Millis::secs(120))?,
                thrash_limit: match &m.thrash_limit {
                    Some(v) => Some(rate("migration.thrash_limit", v)?),
                    None => None,
                },
            };
            // 0 s would move a guest at the first tick of any pressure; past a day, never.
            if escape.grace < Millis::secs(1) || escape.grace > Millis::secs(86_400) {
                return Err(invalid(format!(
                    "`migration.grace`: {} is outside 1s – 24h",
                    escape.grace
                )));
            }
            if let Some((key, why)) =
                aerostat_core::planner::migration::timing_problem(escape.downtime, escape.max_time)
            {
                return Err(invalid(format!("`migration.{key}`: {why}")));
            }
            // The prepare command runs only when the escape fires, perhaps days later: a
            // path that does not exist is said now.
            if m.escape
                && let Some(program) = escape.prepare.as_ref().map(|argv| Path::new(&argv[0]))
            {
                if program.components().count() > 1 && !program.is_file() {
                    return Err(invalid(format!(
                        "`migration.prepare`: {} does not exist",
                        program.display()
                    )));
                }
                if program.components().count() == 1 && !on_path(program) {
                    return Err(invalid(format!(
                        "`migration.prepare`: `{}` is not a file in any directory of PATH",
                        program.display()
                    )));
                }
            }
            // Devices the escape unplugs go back in on the destination, through the QMP
            // socket only the prepare hook can name: without one they would be lost.
            if m.escape && m.prepare.is_none() {
                let named = std::iter::once(("vm_defaults".to_string(), &defaults))
                    .chain(vms.iter().map(|(n, v)| (format!("vm.{n}"), v)))
                    .find(|(_, v)| !v.handoff.unplug.is_empty());
                if let Some((key, _)) = named {
                    return Err(invalid(format!(
                        "`{key}.unplug_for_migration`: the escape plugs these devices back in on \
                         the destination, through the QMP socket a `migration.prepare` hook names \
                         (dest_qmp=); without one they would stay unplugged"
                    )));
                }
            }
            m.escape.then_some(escape)
        };
        // Checked with the control off too, as `[migration]` is with the escape off: a wrong
        // value is said when it is written, not when the control is turned on.
        let ksm_interval = match raw.ksm.interval.as_deref() {
            Some(v) => millis("ksm.interval", v)?,
            None => Millis::secs(10),
        };
        if ksm_interval < Millis::secs(1) || ksm_interval > Millis::secs(3600) {
            return Err(invalid(format!(
                "`ksm.interval`: {ksm_interval} is outside 1s – 1h"
            )));
        }
        // An empty or relative directory would have the rule read and write KSM's files in
        // whatever directory the daemon runs in (`ksm.dir = ""` read `./run`).
        if raw.ksm.dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(invalid(
                "`ksm.dir`: must be an absolute path (KSM's sysfs directory)".into(),
            ));
        }
        let ksm = if raw.ksm.control {
            Some(KsmConfig {
                interval: ksm_interval,
                dir: raw
                    .ksm
                    .dir
                    .unwrap_or_else(|| PathBuf::from(aerostat_host::KSM_DIR)),
            })
        } else {
            None
        };
        if raw
            .host
            .cgroup
            .as_ref()
            .is_some_and(|c| c.as_os_str().is_empty())
        {
            return Err(invalid(
                "`host.cgroup`: must not be empty (leave it out to read the whole host)".into(),
            ));
        }
        if let Some(r) = raw.admission.max_ratio
            && !(r.is_finite() && (0.1..=100.0).contains(&r))
        {
            return Err(invalid(format!(
                "`admission.max_ratio`: {r} is outside 0.1 – 100 (1.25 promises 1.25 × what the host can give)"
            )));
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
            escape,
            ksm,
            max_ratio: raw.admission.max_ratio,
        })
    }

    /// The settings of VM `name`: its own table, else `[vm_defaults]`.
    pub fn vm(&self, name: &str) -> &VmSettings {
        self.vms.get(name).unwrap_or(&self.defaults)
    }
}

/// A VM's `unplug_for_migration` and `replug_after_migration`, each inherited on its own from
/// `base` when unset. The error is a message starting with the key, for `invalid`.
fn handoff(key: &str, raw: &RawVm, base: &Handoff) -> Result<Handoff, String> {
    let unplug = raw
        .unplug_for_migration
        .clone()
        .unwrap_or_else(|| base.unplug.clone());
    match &raw.replug_after_migration {
        Some(steps) => Handoff::parse(
            &unplug,
            steps,
            &format!("`{key}.unplug_for_migration`"),
            |i| format!("`{key}.replug_after_migration` step {}", i + 1),
        ),
        None => {
            // Inherited steps were checked where they were written.
            let mut h = Handoff::parse(
                &unplug,
                &[],
                &format!("`{key}.unplug_for_migration`"),
                |_| String::new(),
            )?;
            h.replug = base.replug.clone();
            Ok(h)
        }
    }
}

/// The line (1-based) where dotted `key` (`host.reserve`, `vm.db.min`) is set: the `key =` line
/// under its `[table]` header.
fn key_line(text: &str, key: &str) -> Option<usize> {
    // `vm."db"` and `vm . db` are `vm.db`.
    let normal = |k: &str| -> String {
        k.split('.')
            .map(|part| part.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        // A comment after a header or a value (`[host]  # the host`); a `#` inside a quoted
        // value is rare in this file and at worst costs the line number.
        let t = line.split('#').next().unwrap_or("").trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = normal(h.trim_matches(|c| c == '[' || c == ']'));
        } else if let Some((k, v)) = t.split_once('=') {
            let full = match current.as_str() {
                "" => normal(k),
                table => format!("{table}.{}", normal(k)),
            };
            if full == key {
                return Some(n + 1);
            }
            // An inline table holding the key: `host = { reserve = "512MB" }`.
            if let Some(rest) = key.strip_prefix(&format!("{full}."))
                && v.trim_start().starts_with('{')
                && v.split(['{', ','])
                    .any(|kv| kv.split_once('=').is_some_and(|(k, _)| normal(k) == rest))
            {
                return Some(n + 1);
            }
        }
    }
    None
}

/// Why `uri` is not a migration URI QEMU takes, if it is not: a scheme and an address, and
/// for `tcp:` a host and a port number.
fn peer_problem(uri: &str) -> Option<String> {
    let Some((scheme, rest)) = uri
        .split_once(':')
        .filter(|(s, r)| !s.is_empty() && !r.is_empty())
    else {
        return Some("SCHEME:ADDRESS, e.g. tcp:HOST:PORT".into());
    };
    // Schemes that reach a destination QEMU. `exec:` and `fd:` hand the stream to
    // something else and `file:` writes it to disk: a "completed" escape to one of those
    // leaves the guest paused here with nowhere running — a lost VM (session 34's fuzzing
    // found them accepted).
    if !["tcp", "unix", "rdma", "vsock"].contains(&scheme) {
        return Some(format!(
            "`{scheme}:` does not reach a destination QEMU (tcp:, unix:, rdma: or vsock:)"
        ));
    }
    if scheme == "tcp" {
        let port_ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Some("tcp:HOST:PORT, with a port number".into());
        }
    }
    None
}

/// Whether a bare command name resolves to a file in a directory of `PATH`, as running it
/// would look it up.
fn on_path(program: &Path) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../docs/examples/aerostat.toml");

    #[test]
    fn devices_to_unplug_for_a_migration_are_checked_where_they_are_written() {
        let with =
            |vm: &str| format!("[host]\nreserve = \"1GiB\"\n[qemu]\nqmp_glob = \"/x/*.qmp\"\n{vm}");
        let parse = |vm: &str| Config::parse(&with(vm), Path::new("a.toml"));
        let ok = parse(
            "[vm_defaults]\nunplug_for_migration = [\"vf0\"]\n[vm.a]\nreplug_after_migration = [{ execute = \"device_add\", arguments = { driver = \"vfio-pci\", id = \"vf0\" } }]\n",
        )
        .expect("valid");
        assert_eq!(
            ok.vm("a").handoff.unplug,
            vec!["vf0".to_string()],
            "inherited"
        );
        assert_eq!(ok.vm("a").handoff.replug.len(), 1);
        assert!(ok.vm("b").handoff.replug.is_empty());
        for (vm, line, says) in [
            (
                "[vm.a]\nunplug_for_migration = [\"a/../b\"]\n",
                6,
                "`vm.a.unplug_for_migration`: `a/../b` is not a QEMU device id",
            ),
            (
                "[vm.a]\nunplug_for_migration = [\"vf0\"]\nreplug_after_migration = [{ execute = \"quit\", arguments = {} }]\n",
                7,
                "`vm.a.replug_after_migration` step 1: `quit` is not a plug command",
            ),
            (
                "[vm.a]\nreplug_after_migration = [{ execute = \"device_add\", arguments = {} }]\n",
                6,
                "that is empty",
            ),
            (
                "[vm.a]\nunplug_for_migration = \"vf0\"\n",
                6,
                "unplug_for_migration",
            ),
            (
                "[vm.a]\nunplug_for_migration = [\"vf0\"]\n[migration]\nescape = true\npeers = [\"tcp:h:1\"]\n",
                6,
                "a `migration.prepare` hook",
            ),
        ] {
            let e = parse(vm).expect_err("refused").to_string();
            assert!(
                e.contains(says) && e.contains(&format!("line {line}")),
                "{vm}: {e}"
            );
        }
    }

    #[test]
    fn documented_example_parses() {
        let c = Config::parse(EXAMPLE, Path::new("aerostat.toml")).expect("example is valid");
        assert_eq!(c.reserve, Bytes::mib(512));
        assert_eq!(c.interval, Millis::secs(2));
        assert_eq!(c.listen, Some("127.0.0.1:9464".parse().expect("addr")));
        assert_eq!(c.escape, None, "the example leaves the escape off");
        assert_eq!(c.vm("build").headroom, Some(Bytes::gib(1)));
        assert_eq!(c.vm("db").headroom, None);
        assert_eq!(c.vm("build").swap, Some(Bytes::gib(2)));
        assert_eq!(c.vm("db").swap, None);
        assert_eq!(c.vm("gpu").migratable, Some(false));
        assert_eq!(c.vm("nic").handoff.unplug, vec!["vf0".to_string()]);
        assert_eq!(c.vm("nic").handoff.replug[0].names(), "device_add vf0");
        assert!(c.vm("db").handoff.is_empty());
        assert_eq!(
            c.vm("db").migratable,
            None,
            "left to the devices QEMU shows"
        );
        let e = Config::parse(
            &EXAMPLE.replace("migratable = false", "migratable = \"no\""),
            Path::new("aerostat.toml"),
        )
        .expect_err("not a bool")
        .to_string();
        assert!(e.contains("line 22") && e.contains("migratable"), "{e}");
        let e = Config::parse(
            &EXAMPLE.replace("swap = \"2GiB\"", "swap = \"2 gigs\""),
            Path::new("aerostat.toml"),
        )
        .expect_err("bad size")
        .to_string();
        assert!(e.contains("`vm.build.swap`"), "{e}");
        let e = Config::parse(
            &EXAMPLE.replace("headroom = \"1GiB\"", "headroom = \"1GB\""),
            Path::new("aerostat.toml"),
        )
        .expect_err("bad unit")
        .to_string();
        assert!(e.contains("`vm.build.headroom`"), "{e}");
        // Turned on as is, the example's vm.nic needs a prepare hook for its devices.
        let on = EXAMPLE.replace("escape = false", "escape = true");
        let e = Config::parse(&on, Path::new("aerostat.toml"))
            .expect_err("devices to unplug need a prepare hook")
            .to_string();
        assert!(e.contains("`vm.nic.unplug_for_migration`"), "{e}");
        let on = on.replace(
            "# prepare = [\"/usr/local/libexec/aerostat-prepare-destination\"]",
            "prepare = [\"sh\", \"-c\", \"true\"]",
        );
        let c = Config::parse(&on, Path::new("aerostat.toml")).expect("escape on is valid");
        let e = c.escape.expect("escape on");
        assert_eq!(e.peers, ["tcp:10.0.0.2:4444"]);
        assert_eq!(e.grace, Millis::secs(60));
        assert_eq!(e.bandwidth, Bytes::mib(128));
    }

    /// Without `qemu.stats_interval` the guest is polled as often as the policy decides,
    /// in whole seconds.
    #[test]
    fn stats_are_polled_as_often_as_the_policy_decides() {
        let polled_every = |policy_interval: &str| {
            let text = format!(
                "[host]\nreserve = \"512MiB\"\n[policy]\ninterval = \"{policy_interval}\"\n\
                 [qemu]\nqmp_glob = \"/tmp/*.qmp\"\n"
            );
            Config::parse(&text, Path::new("a.toml"))
                .expect(policy_interval)
                .stats_interval_s
        };
        assert_eq!(polled_every("1s"), 1);
        assert_eq!(polled_every("500ms"), 1);
        assert_eq!(polled_every("1500ms"), 2);
        assert_eq!(polled_every("10s"), 10);
    }

    #[test]
    fn escape_settings_are_checked() {
        let base = "[host]\nreserve = \"512MiB\"\n[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n[migration]\n";
        let err = |extra: &str| {
            Config::parse(&format!("{base}{extra}"), Path::new("a.toml"))
                .expect_err(extra)
                .to_string()
        };
        // Named by the line of the key the file has (session 27: no line before).
        let no_peer = err("escape = true\n");
        assert!(
            no_peer.contains("line 6: `migration.escape`") && no_peer.contains("migration.peers"),
            "{no_peer}"
        );
        let cgroup = Config::parse(
            &base.replace("[host]\n", "[host]\ncgroup = \"\"\n"),
            Path::new("a.toml"),
        )
        .expect_err("empty cgroup")
        .to_string();
        assert!(
            cgroup.contains("`host.cgroup`: must not be empty"),
            "{cgroup}"
        );
        assert!(err("escape = true\npeers = [\"host\"]\n").contains("not a migration URI"));
        for uri in ["file:/tmp/x", "exec:rm", "fd:3"] {
            let e = err(&format!("escape = true\npeers = [\"{uri}\"]\n"));
            assert!(
                e.contains("does not reach a destination QEMU"),
                "{uri}: {e}"
            );
        }
        assert!(
            err("escape = true\npeers = [\"tcp:h:1\"]\nbandwidth = \"1GiB\"\n")
                .contains("migration.bandwidth")
        );
        assert!(err("escape = true\nprepare = []\n").contains("migration.prepare"));
        // Found by a bad-input hunt (session 21): accepted, they could only fail when the
        // escape fired.
        assert!(
            err("escape = true\npeers = [\"tcp:host-without-port\"]\n")
                .contains("with a port number")
        );
        assert!(err("escape = true\npeers = [\"tcp:h:99999\"]\n").contains("not a migration URI"));
        assert!(
            err("escape = true\npeers = [\"tcp:h:1\"]\ndowntime = \"1h\"\nmax_time = \"2h\"\n")
                .contains("migration.downtime")
        );
        assert!(
            err("escape = true\nprepare = [\"no-such-prepare-command-aerostat\"]\n")
                .contains("not a file in any directory of PATH")
        );
        Config::parse(
            &format!("{base}escape = true\nprepare = [\"sh\", \"-c\", \"true\"]\npeers = [\"unix:/run/x.sock\"]\n"),
            Path::new("a.toml"),
        )
        .expect("a command on PATH and a unix peer");
        assert!(
            err("escape = true\npeers = [\"tcp:h:1\"]\ngrace = \"soon\"\n")
                .contains("line 8: `migration.grace`")
        );
        assert!(err("escape = true\npeer = [\"tcp:h:1\"]\n").contains("peer"));
        let off = Config::parse(
            &format!("{base}peers = [\"tcp:h:1\"]\n"),
            Path::new("a.toml"),
        )
        .expect("off is fine");
        assert_eq!(off.escape, None);
        // Checked even while off.
        assert!(err("grace = \"soon\"\n").contains("migration.grace"));
        assert!(err("grace = \"0s\"\n").contains("outside 1s"));
        assert!(err("grace = \"999999h\"\n").contains("outside 1s"));
    }

    /// Sizes past any guest and a KSM directory that is not absolute are refused, named.
    #[test]
    fn absurd_guest_sizes_and_a_relative_ksm_dir_are_refused() {
        let base = "[host]\nreserve = \"512MiB\"\n[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n";
        for (extra, says) in [
            ("[vm_defaults]\nmin = \"8000000TiB\"\n", "`vm_defaults.min`"),
            ("[vm.db]\noverhead = \"17TiB\"\n", "`vm.db.overhead`"),
            ("[ksm]\ndir = \"\"\n", "`ksm.dir`"),
            ("[ksm]\ndir = \"run\"\n", "`ksm.dir`"),
        ] {
            let e = Config::parse(&format!("{base}{extra}"), Path::new("a.toml"))
                .expect_err(extra)
                .to_string();
            assert!(e.contains(says), "{extra}: {e}");
        }
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

    /// An array where a section belongs is refused at its line: serde's derive read
    /// `host = ["512MiB"]` as a host with a 512 MiB reserve (session 29).
    #[test]
    fn an_array_where_a_section_belongs_is_refused() {
        let tail = "[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n";
        for (text, line) in [
            (format!("host = [\"512MiB\"]\n{tail}"), 1),
            (
                format!("[host]\nreserve = \"512MiB\"\n{tail}[vm]\ndb = [\"2GiB\"]\n"),
                6,
            ),
            (
                format!("[host]\nreserve = \"512MiB\"\n{tail}[[ksm]]\ncontrol = true\n"),
                5,
            ),
            (
                format!("vm_defaults = [\"1GiB\"]\n[host]\nreserve = \"512MiB\"\n{tail}"),
                1,
            ),
        ] {
            let e = Config::parse(&text, Path::new("a.toml"))
                .expect_err("an array accepted")
                .to_string();
            assert!(
                e.contains(&format!("line {line}")) && e.contains("expected a table"),
                "{text}\n{e}"
            );
        }
    }

    /// The line is found however the key is written: after a header with a comment, as a
    /// dotted key, in an inline table, under a quoted table name (an audit got no line for
    /// each of these).
    #[test]
    fn errors_find_their_line_in_every_toml_form() {
        let tail = "[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n";
        for (text, line) in [
            (
                format!("[host]   # the host\nreserve = \"512MB\"\n{tail}"),
                2,
            ),
            (format!("host.reserve = \"512MB\"\n{tail}"), 1),
            (format!("host = {{ reserve = \"512MB\" }}\n{tail}"), 1),
            (
                format!("[host]\nreserve = \"512MiB\"\n{tail}[vm.\"db\"]\nmin = \"2GB\"\n"),
                6,
            ),
        ] {
            let e = Config::parse(&text, Path::new("a.toml"))
                .expect_err("bad unit accepted")
                .to_string();
            assert!(
                e.contains(&format!("a.toml: line {line}: `")),
                "{text}\n{e}"
            );
        }
    }

    #[test]
    fn bad_units_name_the_field() {
        let text = "[host]\nreserve = \"512MB\"\n[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n";
        let e = Config::parse(text, Path::new("a.toml"))
            .expect_err("bad unit")
            .to_string();
        assert!(e.contains("host.reserve") && e.contains("MB"), "{e}");
        assert!(e.contains("a.toml: line 2: `host.reserve`"), "{e}");
        let text = "[host]\nreserve = \"512MiB\"\n[policy]\nname = \"magic\"\n[qemu]\nqmp_glob = \"/tmp/*.qmp\"\n";
        let e = Config::parse(text, Path::new("a.toml"))
            .expect_err("bad policy")
            .to_string();
        assert!(e.contains("policy.name"), "{e}");
    }

    #[test]
    fn ksm_control_is_off_unless_asked_and_its_keys_are_checked() {
        let c = Config::parse(EXAMPLE, Path::new("aerostat.toml")).expect("example is valid");
        assert_eq!(c.ksm, None, "the example leaves KSM alone");
        let on = EXAMPLE.replace("control = false", "control = true");
        let c = Config::parse(&on, Path::new("aerostat.toml")).expect("valid");
        assert_eq!(
            c.ksm,
            Some(KsmConfig {
                interval: Millis::secs(10),
                dir: PathBuf::from("/sys/kernel/mm/ksm"),
            })
        );
        let e = Config::parse(
            &on.replace("interval = \"10s\"\n", "interval = \"50ms\"\n"),
            Path::new("aerostat.toml"),
        )
        .expect_err("too short")
        .to_string();
        assert!(e.contains("`ksm.interval`"), "{e}");
        // Checked with the control off too.
        let e = Config::parse(
            &EXAMPLE.replace("interval = \"10s\"\n", "interval = \"2 h\"\n"),
            Path::new("aerostat.toml"),
        )
        .expect_err("bad interval with KSM off")
        .to_string();
        assert!(e.contains("`ksm.interval`"), "{e}");
        let e = Config::parse(
            &on.replace("control = true", "control = true\nrate = 3"),
            Path::new("aerostat.toml"),
        )
        .expect_err("unknown key")
        .to_string();
        assert!(e.contains("rate"), "{e}");
    }
}
