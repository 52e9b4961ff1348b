//! Migration primitives: capabilities, parameters, start, progress, post-copy switch, cancel,
//! and the dirty-rate probe. Mechanism only; when to migrate and when to switch to post-copy
//! is decided elsewhere.

use aerostat_core::Bytes;
use serde_json::{Map, Value, json};

use super::QemuVm;
use super::json::{object, opt_f64, opt_i64, opt_str, opt_u64, req_u64};
use crate::qmp::QmpError;

/// `MigrationStatus`. Values this version does not know are kept as `Other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MigrationStatus {
    /// No migration has started (QEMU 10 answers `query-migrate` with `{}` then).
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecoverSetup,
    PostcopyRecover,
    Completed,
    Failed,
    Colo,
    PreSwitchover,
    Device,
    WaitUnplug,
    Other(String),
}

impl MigrationStatus {
    pub fn parse(s: &str) -> MigrationStatus {
        match s {
            "none" => MigrationStatus::None,
            "setup" => MigrationStatus::Setup,
            "cancelling" => MigrationStatus::Cancelling,
            "cancelled" => MigrationStatus::Cancelled,
            "active" => MigrationStatus::Active,
            "postcopy-active" => MigrationStatus::PostcopyActive,
            "postcopy-paused" => MigrationStatus::PostcopyPaused,
            "postcopy-recover-setup" => MigrationStatus::PostcopyRecoverSetup,
            "postcopy-recover" => MigrationStatus::PostcopyRecover,
            "completed" => MigrationStatus::Completed,
            "failed" => MigrationStatus::Failed,
            "colo" => MigrationStatus::Colo,
            "pre-switchover" => MigrationStatus::PreSwitchover,
            "device" => MigrationStatus::Device,
            "wait-unplug" => MigrationStatus::WaitUnplug,
            other => MigrationStatus::Other(other.to_string()),
        }
    }

    /// Whether the migration has ended, one way or the other.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

/// Migration capabilities we use, plus any other by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MigrationCapability {
    Xbzrle,
    AutoConverge,
    /// Emit `MIGRATION` (and pass) events.
    Events,
    /// Allow `migrate-start-postcopy`; must be set on both sides before `migrate`.
    PostcopyRam,
    /// Report `postcopy-blocktime` in `query-migrate`.
    PostcopyBlocktime,
    PauseBeforeSwitchover,
    Multifd,
    ZeroCopySend,
    DirtyLimit,
    Other(String),
}

impl MigrationCapability {
    pub fn as_str(&self) -> &str {
        match self {
            MigrationCapability::Xbzrle => "xbzrle",
            MigrationCapability::AutoConverge => "auto-converge",
            MigrationCapability::Events => "events",
            MigrationCapability::PostcopyRam => "postcopy-ram",
            MigrationCapability::PostcopyBlocktime => "postcopy-blocktime",
            MigrationCapability::PauseBeforeSwitchover => "pause-before-switchover",
            MigrationCapability::Multifd => "multifd",
            MigrationCapability::ZeroCopySend => "zero-copy-send",
            MigrationCapability::DirtyLimit => "dirty-limit",
            MigrationCapability::Other(s) => s,
        }
    }
}

/// `migrate-set-parameters`: only the fields that are `Some` are sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationParameters {
    /// `downtime-limit` (QEMU default 300 ms).
    pub downtime_limit_ms: Option<u64>,
    /// `max-bandwidth` (QEMU default 128 MiB/s).
    pub max_bandwidth_bytes_per_sec: Option<u64>,
    /// `max-postcopy-bandwidth` (0: unlimited).
    pub max_postcopy_bandwidth_bytes_per_sec: Option<u64>,
    /// `avail-switchover-bandwidth` (0: estimate it).
    pub avail_switchover_bandwidth_bytes_per_sec: Option<u64>,
    /// `cpu-throttle-initial` for auto-converge (default 20).
    pub cpu_throttle_initial_percent: Option<u8>,
    /// `cpu-throttle-increment` (default 10).
    pub cpu_throttle_increment_percent: Option<u8>,
    /// `max-cpu-throttle` (default 99).
    pub max_cpu_throttle_percent: Option<u8>,
    /// `throttle-trigger-threshold` (default 50).
    pub throttle_trigger_threshold_percent: Option<u8>,
    /// `multifd-channels` (default 2).
    pub multifd_channels: Option<u8>,
}

impl MigrationParameters {
    /// The `arguments` object for `migrate-set-parameters`.
    pub fn to_arguments(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                m.insert(k.to_string(), Value::from(v));
            }
        };
        put("downtime-limit", self.downtime_limit_ms);
        put("max-bandwidth", self.max_bandwidth_bytes_per_sec);
        put(
            "max-postcopy-bandwidth",
            self.max_postcopy_bandwidth_bytes_per_sec,
        );
        put(
            "avail-switchover-bandwidth",
            self.avail_switchover_bandwidth_bytes_per_sec,
        );
        let pct = |v: Option<u8>| v.map(u64::from);
        put(
            "cpu-throttle-initial",
            pct(self.cpu_throttle_initial_percent),
        );
        put(
            "cpu-throttle-increment",
            pct(self.cpu_throttle_increment_percent),
        );
        put("max-cpu-throttle", pct(self.max_cpu_throttle_percent));
        put(
            "throttle-trigger-threshold",
            pct(self.throttle_trigger_threshold_percent),
        );
        put("multifd-channels", pct(self.multifd_channels));
        Value::Object(m)
    }
}

/// RAM progress of a migration (`query-migrate` → `ram`).
#[derive(Clone, Debug, PartialEq)]
pub struct RamStats {
    pub transferred: Bytes,
    pub remaining: Bytes,
    pub total: Bytes,
    /// Pages dirtied per second in the last pass.
    pub dirty_pages_per_sec: u64,
    /// Completed dirty-bitmap syncs: the number of pre-copy passes so far.
    pub dirty_sync_count: u64,
    /// Throughput in megabits per second (QEMU's `mbps`).
    pub mbps: f64,
    /// Target page size; `None` on QEMUs that do not report it.
    pub page_size: Option<Bytes>,
    pub precopy_bytes: Option<Bytes>,
    pub postcopy_bytes: Option<Bytes>,
    pub downtime_bytes: Option<Bytes>,
}

/// `query-migrate`. Times are as QEMU reports them; QEMU 7.2 was seen reporting a total time
/// of 0 for a completed migration, so cross-check with wall-clock time and events.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationInfo {
    pub status: MigrationStatus,
    pub ram: Option<RamStats>,
    pub setup_time_ms: Option<u64>,
    /// Time since the start (while active) or the whole migration (when completed).
    pub total_time_ms: Option<u64>,
    /// Estimate while active.
    pub expected_downtime_ms: Option<u64>,
    /// Measured, once completed.
    pub downtime_ms: Option<u64>,
    /// Total vCPU blocked time in post-copy (needs the `postcopy-blocktime` capability).
    pub postcopy_blocktime_ms: Option<u64>,
    /// Current auto-converge throttle.
    pub cpu_throttle_percent: Option<u64>,
    /// Why it failed, when it did.
    pub error_desc: Option<String>,
    /// Why QEMU would refuse to start a migration now (`blocked-reasons`, QEMU 6.0+): a
    /// device without migration support — most VFIO devices, ivshmem in peer mode, a
    /// mounted 9p share, ... Empty: nothing blocks it (or a QEMU too old to say).
    pub blocked_reasons: Vec<String>,
}

/// `query-dirty-rate` state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DirtyRateStatus {
    Unstarted,
    Measuring,
    Measured,
    Other(String),
}

/// `query-dirty-rate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyRateInfo {
    pub status: DirtyRateStatus,
    /// Estimated dirty rate in MiB/s, present once measured.
    pub dirty_rate_mib_per_sec: Option<u64>,
    /// When the measurement started, host wall-clock seconds since the Unix epoch.
    pub start_time_secs: Option<i64>,
    /// Measurement length in `calc_time_unit`s (seconds unless asked otherwise).
    pub calc_time: Option<u64>,
    pub calc_time_unit: Option<String>,
    /// `page-sampling`, `dirty-ring` or `dirty-bitmap`.
    pub mode: Option<String>,
}

impl QemuVm {
    /// Turns migration capabilities on or off (before `migrate`, on both sides where needed).
    pub async fn migrate_set_capabilities(
        &self,
        caps: &[(MigrationCapability, bool)],
    ) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, on)| json!({"capability": c.as_str(), "state": on}))
            .collect();
        self.client
            .execute(
                "migrate-set-capabilities",
                Some(json!({ "capabilities": list })),
            )
            .await?;
        Ok(())
    }

    pub async fn migrate_set_parameters(&self, p: &MigrationParameters) -> Result<(), QmpError> {
        self.client
            .execute("migrate-set-parameters", Some(p.to_arguments()))
            .await?;
        Ok(())
    }

    /// Starts an outgoing migration to `uri` (`tcp:HOST:PORT`, `unix:PATH`, `exec:CMD`,
    /// `file:PATH`). Returns once started; poll [`QemuVm::query_migrate`] for progress.
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.client
            .execute("migrate", Some(json!({ "uri": uri })))
            .await?;
        Ok(())
    }

    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        let v = self.client.execute("query-migrate", None).await?;
        parse_migration_info(&v)
    }

    /// Why QEMU would refuse to migrate the VM now ([`MigrationInfo::blocked_reasons`]).
    pub async fn migration_blockers(&self) -> Result<Vec<String>, QmpError> {
        Ok(self.query_migrate().await?.blocked_reasons)
    }

    /// Switches a running pre-copy migration to post-copy (needs `postcopy-ram` on both sides).
    pub async fn migrate_start_postcopy(&self) -> Result<(), QmpError> {
        self.client.execute("migrate-start-postcopy", None).await?;
        Ok(())
    }

    /// Cancels the outgoing migration; the source keeps running.
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.client.execute("migrate_cancel", None).await?;
        Ok(())
    }

    /// Starts a dirty-rate measurement over `calc_time_secs` seconds (page sampling).
    pub async fn calc_dirty_rate(&self, calc_time_secs: u32) -> Result<(), QmpError> {
        self.client
            .execute(
                "calc-dirty-rate",
                Some(json!({ "calc-time": calc_time_secs })),
            )
            .await?;
        Ok(())
    }

    pub async fn query_dirty_rate(&self) -> Result<DirtyRateInfo, QmpError> {
        let v = self.client.execute("query-dirty-rate", None).await?;
        parse_dirty_rate(&v)
    }
}

/// Decodes a `query-migrate` reply. `ram`, when present, must carry its byte counts.
pub fn parse_migration_info(v: &Value) -> Result<MigrationInfo, QmpError> {
    let obj = object(v, "query-migrate")?;
    let status = opt_str(obj, "status")
        .map(|s| MigrationStatus::parse(&s))
        .unwrap_or(MigrationStatus::None);
    let ram = match obj.get("ram") {
        None => None,
        Some(r) => Some(parse_ram(object(r, "query-migrate ram")?)?),
    };
    Ok(MigrationInfo {
        status,
        ram,
        setup_time_ms: opt_u64(obj, "setup-time"),
        total_time_ms: opt_u64(obj, "total-time"),
        expected_downtime_ms: opt_u64(obj, "expected-downtime"),
        downtime_ms: opt_u64(obj, "downtime"),
        postcopy_blocktime_ms: opt_u64(obj, "postcopy-blocktime"),
        cpu_throttle_percent: opt_u64(obj, "cpu-throttle-percentage"),
        error_desc: opt_str(obj, "error-desc"),
        blocked_reasons: blocked_reasons(obj),
    })
}

/// `blocked-reasons`: the strings of the list, at most [`MAX_BLOCKERS`] of at most
/// [`MAX_BLOCKER_CHARS`] characters each (they are shown to people and logged); anything
/// else in it is left out.
fn blocked_reasons(obj: &Map<String, Value>) -> Vec<String> {
    obj.get("blocked-reasons")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .take(MAX_BLOCKERS)
                .map(|s| s.chars().take(MAX_BLOCKER_CHARS).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// Bounds on what `blocked-reasons` may bring into `/status` and the logs.
const MAX_BLOCKERS: usize = 16;
const MAX_BLOCKER_CHARS: usize = 300;

fn parse_ram(r: &Map<String, Value>) -> Result<RamStats, QmpError> {
    let what = "query-migrate ram";
    let bytes = |k| opt_u64(r, k).map(Bytes);
    Ok(RamStats {
        transferred: Bytes(req_u64(r, "transferred", what)?),
        remaining: Bytes(req_u64(r, "remaining", what)?),
        total: Bytes(req_u64(r, "total", what)?),
        dirty_pages_per_sec: req_u64(r, "dirty-pages-rate", what)?,
        dirty_sync_count: req_u64(r, "dirty-sync-count", what)?,
        mbps: opt_f64(r, "mbps")
            .filter(|m| *m >= 0.0)
            .ok_or_else(|| QmpError::protocol(format!("{what}: `mbps` missing or negative")))?,
        page_size: bytes("page-size"),
        precopy_bytes: bytes("precopy-bytes"),
        postcopy_bytes: bytes("postcopy-bytes"),
        downtime_bytes: bytes("downtime-bytes"),
    })
}

/// Decodes a `query-dirty-rate` reply.
pub fn parse_dirty_rate(v: &Value) -> Result<DirtyRateInfo, QmpError> {
    let obj = object(v, "query-dirty-rate")?;
    let status = match opt_str(obj, "status").as_deref() {
        Some("unstarted") => DirtyRateStatus::Unstarted,
        Some("measuring") => DirtyRateStatus::Measuring,
        Some("measured") => DirtyRateStatus::Measured,
        Some(other) => DirtyRateStatus::Other(other.to_string()),
        None => return Err(QmpError::protocol("query-dirty-rate: no `status`")),
    };
    Ok(DirtyRateInfo {
        status,
        dirty_rate_mib_per_sec: opt_u64(obj, "dirty-rate"),
        start_time_secs: opt_i64(obj, "start-time"),
        calc_time: opt_u64(obj, "calc-time"),
        calc_time_unit: opt_str(obj, "calc-time-unit"),
        mode: opt_str(obj, "mode"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::testing::arb_json;
    use proptest::prelude::*;

    #[test]
    fn no_migration_yet_is_status_none() {
        // QEMU 10.0.2 answers `{}` before any migration.
        let info = parse_migration_info(&json!({})).expect("parses");
        assert_eq!(info.status, MigrationStatus::None);
        assert_eq!(info.ram, None);
        assert!(info.blocked_reasons.is_empty());
    }

    #[test]
    fn blockers_are_read_and_bounded() {
        // QEMU 10.0.2 with `-device ivshmem-plain` (peer mode), before any migration.
        let v = json!({"blocked-reasons": [
            "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"
        ]});
        let info = parse_migration_info(&v).expect("parses");
        assert_eq!(info.status, MigrationStatus::None);
        assert_eq!(info.blocked_reasons.len(), 1);
        assert!(info.blocked_reasons[0].contains("ivshmem"));
        // Not strings, too many, too long: kept within bounds, never an error.
        let long = "x".repeat(10_000);
        let many: Vec<Value> = (0..100).map(|_| json!(long)).chain([json!(3)]).collect();
        let info = parse_migration_info(&json!({"blocked-reasons": many})).expect("parses");
        assert_eq!(info.blocked_reasons.len(), MAX_BLOCKERS);
        assert!(
            info.blocked_reasons
                .iter()
                .all(|r| r.chars().count() == MAX_BLOCKER_CHARS)
        );
        let info = parse_migration_info(&json!({"blocked-reasons": "one"})).expect("parses");
        assert!(info.blocked_reasons.is_empty());
    }

    #[test]
    fn parses_qemu10_completed_migration() {
        let v: Value = serde_json::from_str(r#"{"status": "completed", "setup-time": 3, "downtime": 2, "total-time": 39, "ram": {"total": 537403392, "postcopy-requests": 0, "dirty-sync-count": 2, "multifd-bytes": 0, "pages-per-second": 0, "downtime-bytes": 201103, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 389.50244444444445, "transferred": 1752761, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 1393850, "duplicate": 131150, "dirty-pages-rate": 0, "normal-bytes": 413696, "normal": 101}}"#).expect("sample");
        let info = parse_migration_info(&v).expect("parses");
        assert_eq!(info.status, MigrationStatus::Completed);
        assert!(info.status.is_finished());
        assert_eq!(info.downtime_ms, Some(2));
        assert_eq!(info.total_time_ms, Some(39));
        assert_eq!(info.expected_downtime_ms, None);
        let ram = info.ram.expect("ram");
        assert_eq!(ram.total, Bytes(537403392));
        assert_eq!(ram.transferred, Bytes(1752761));
        assert_eq!(ram.remaining, Bytes(0));
        assert_eq!(ram.dirty_sync_count, 2);
        assert_eq!(ram.page_size, Some(Bytes(4096)));
        assert!((ram.mbps - 389.5).abs() < 0.01);
    }

    #[test]
    fn active_postcopy_fields() {
        let v = json!({"status": "postcopy-active", "expected-downtime": 120,
            "postcopy-blocktime": 7, "cpu-throttle-percentage": 30,
            "ram": {"transferred": 1, "remaining": 2, "total": 3, "dirty-pages-rate": 4000,
                    "dirty-sync-count": 5, "mbps": 1000.0}});
        let info = parse_migration_info(&v).expect("parses");
        assert_eq!(info.status, MigrationStatus::PostcopyActive);
        assert_eq!(info.expected_downtime_ms, Some(120));
        assert_eq!(info.postcopy_blocktime_ms, Some(7));
        assert_eq!(info.cpu_throttle_percent, Some(30));
        assert_eq!(info.ram.expect("ram").dirty_pages_per_sec, 4000);
    }

    #[test]
    fn ram_without_counts_is_an_error() {
        let v = json!({"status": "active", "ram": {"total": 3}});
        assert!(matches!(
            parse_migration_info(&v),
            Err(QmpError::Protocol { .. })
        ));
        let v = json!({"status": "failed", "error-desc": "boom"});
        let info = parse_migration_info(&v).expect("parses");
        assert_eq!(info.error_desc.as_deref(), Some("boom"));
        assert_eq!(
            parse_migration_info(&json!({"status": "new-state"}))
                .expect("parses")
                .status,
            MigrationStatus::Other("new-state".into())
        );
    }

    #[test]
    fn parameters_send_only_what_is_set() {
        let p = MigrationParameters {
            downtime_limit_ms: Some(300),
            max_bandwidth_bytes_per_sec: Some(1 << 30),
            multifd_channels: Some(4),
            ..Default::default()
        };
        assert_eq!(
            p.to_arguments(),
            json!({"downtime-limit": 300, "max-bandwidth": 1073741824u64, "multifd-channels": 4})
        );
        assert_eq!(MigrationParameters::default().to_arguments(), json!({}));
    }

    #[test]
    fn parses_dirty_rate() {
        let v: Value = serde_json::from_str(r#"{"status": "measured", "sample-pages": 512, "dirty-rate": 0, "mode": "page-sampling", "calc-time-unit": "second", "start-time": 1795475544, "calc-time": 1}"#).expect("sample");
        let d = parse_dirty_rate(&v).expect("parses");
        assert_eq!(d.status, DirtyRateStatus::Measured);
        assert_eq!(d.dirty_rate_mib_per_sec, Some(0));
        assert_eq!(d.start_time_secs, Some(1795475544));
        assert_eq!(d.mode.as_deref(), Some("page-sampling"));
        let v = json!({"status": "unstarted", "start-time": 0, "calc-time": 0});
        assert_eq!(
            parse_dirty_rate(&v).expect("parses").dirty_rate_mib_per_sec,
            None
        );
        assert!(parse_dirty_rate(&json!({})).is_err());
    }

    proptest! {
        #[test]
        fn migration_parsers_never_panic(v in arb_json(), ram in arb_json()) {
            let _ = parse_migration_info(&v);
            let _ = parse_dirty_rate(&v);
            let _ = parse_migration_info(&json!({"status": "active", "ram": ram}));
        }
    }
}
