//! virtio-balloon: target, `actual`, device discovery and guest statistics.

use aerostat_core::{Bytes, GuestStats, Millis};
use serde_json::{Map, Value, json};

use super::QemuVm;
use super::json::{object, opt_u64, req_u64};
use crate::qmp::QmpError;

/// Largest guest memory figure (total, free, available, caches) we believe: 16 TiB.
/// No VM this controller manages comes near it (QEMU's default x86 `phys-bits` and the largest
/// single-host KVM guests are a few TiB); a bigger number is a broken or lying guest, and
/// passing it on would let one guest's report dwarf every host-side fact. Raise it for
/// larger guests.
pub const MAX_GUEST_MEMORY: Bytes = Bytes(16 << 40);

/// Largest cumulative byte counter (swap in/out) we believe: 2^53 bytes (8 PiB). Swapping that
/// much at 1 GB/s takes about 100 days of non-stop thrashing; beyond it `f64` (which the
/// policies use for rates) also stops being exact.
pub const MAX_GUEST_CUMULATIVE_BYTES: Bytes = Bytes(1 << 53);

/// Largest event counter (faults, OOM kills, allocation stalls) we believe: 2^53, the range
/// where `f64` rates stay exact; ten million faults a second need 28 years to get there.
pub const MAX_GUEST_COUNTER: u64 = 1 << 53;

/// How QEMU spells "the guest did not report this stat" (-1 as an unsigned 64-bit number).
const STAT_UNSUPPORTED: u64 = u64::MAX;

impl QemuVm {
    /// Current guest memory (`query-balloon` → `actual`): configured memory minus the balloon.
    pub async fn query_balloon(&self) -> Result<Bytes, QmpError> {
        let v = self.client.execute("query-balloon", None).await?;
        let obj = object(&v, "query-balloon")?;
        Ok(Bytes(req_u64(obj, "actual", "query-balloon")?))
    }

    /// Asks the guest to bring its memory to `target` (QMP `balloon value=`). Returns when
    /// QEMU accepted the request; the guest driver moves `actual` later, or never.
    pub async fn set_balloon(&self, target: Bytes) -> Result<(), QmpError> {
        // QMP takes an int64; a larger value would be refused as a JSON parse error anyway.
        if target.0 > i64::MAX as u64 {
            return Err(QmpError::InvalidArgument {
                detail: format!("balloon target {} does not fit QMP's int64", target.0),
            });
        }
        self.client
            .execute("balloon", Some(json!({ "value": target.0 })))
            .await?;
        Ok(())
    }

    /// The QOM path of the first virtio-balloon device under `/machine/peripheral` (devices
    /// with an `id=`) or `/machine/peripheral-anon` (devices without one), or `None` when the
    /// VM has no balloon. A found path is remembered.
    pub async fn find_balloon_path(&self) -> Result<Option<String>, QmpError> {
        if let Some(p) = self.cached_balloon_path() {
            return Ok(Some(p));
        }
        for parent in ["/machine/peripheral", "/machine/peripheral-anon"] {
            let v = self
                .client
                .execute("qom-list", Some(json!({ "path": parent })))
                .await?;
            if let Some(name) = balloon_child(&v) {
                let path = format!("{parent}/{name}");
                *self.balloon_path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.clone());
                return Ok(Some(path));
            }
        }
        Ok(None)
    }

    fn cached_balloon_path(&self) -> Option<String> {
        self.balloon_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn balloon_path(&self) -> Result<String, QmpError> {
        self.find_balloon_path().await?.ok_or(QmpError::NoDevice {
            what: "virtio-balloon device",
        })
    }

    /// Tells QEMU to ask the guest for statistics every `interval_secs` (0 turns it off).
    pub async fn enable_stats_polling(&self, interval_secs: u32) -> Result<(), QmpError> {
        let path = self.balloon_path().await?;
        self.client
            .execute(
                "qom-set",
                Some(json!({
                    "path": path,
                    "property": "guest-stats-polling-interval",
                    "value": interval_secs,
                })),
            )
            .await?;
        Ok(())
    }

    /// One property of the balloon device (`qom-get`).
    async fn balloon_property(&self, property: &str) -> Result<Value, QmpError> {
        let path = self.balloon_path().await?;
        self.client
            .execute(
                "qom-get",
                Some(json!({ "path": path, "property": property })),
            )
            .await
    }

    /// The statistics polling interval QEMU uses now, seconds (0: off).
    pub async fn stats_polling_interval(&self) -> Result<u32, QmpError> {
        let v = self
            .balloon_property("guest-stats-polling-interval")
            .await?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| QmpError::protocol(format!("guest-stats-polling-interval: {v}")))
    }

    /// Whether the balloon device was started with `deflate-on-oom=on` (the guest then
    /// keeps the balloon's pages in its MemTotal).
    pub async fn balloon_deflates_on_oom(&self) -> Result<bool, QmpError> {
        let v = self.balloon_property("deflate-on-oom").await?;
        v.as_bool()
            .ok_or_else(|| QmpError::protocol(format!("deflate-on-oom: {v}")))
    }

    /// The guest's latest balloon statistics. Untrusted: see [`parse_guest_stats`].
    pub async fn guest_stats(&self) -> Result<GuestStats, QmpError> {
        parse_guest_stats(&self.balloon_property("guest-stats").await?)
    }
}

/// Finds a `child<virtio-balloon-…>` entry in a `qom-list` reply (pci, pci-transitional,
/// ccw, or the bare virtio-mmio device).
fn balloon_child(v: &Value) -> Option<String> {
    v.as_array()?.iter().find_map(|entry| {
        let name = entry.get("name")?.as_str()?;
        let ty = entry.get("type")?.as_str()?;
        ty.starts_with("child<virtio-balloon")
            .then(|| name.to_string())
    })
}

/// Maps QEMU's `guest-stats` object (`{"stats": {"stat-…": n}, "last-update": secs}`) to
/// [`GuestStats`].
///
/// A stat that is missing, negative, not an integer, QEMU's "unsupported" value
/// (18446744073709551615, i.e. -1) or beyond its plausibility bound becomes `None`, never
/// zero: zero free memory is a claim, an unknown is not. `last-update` is QEMU's host
/// wall-clock time in seconds since the Unix epoch (0: the guest never reported); it is
/// returned as milliseconds since the epoch, and the driver rebases it to its own clock.
/// Only the outer shape (an object with a `stats` object) is required.
pub fn parse_guest_stats(v: &Value) -> Result<GuestStats, QmpError> {
    let obj = object(v, "guest-stats")?;
    let Some(stats) = obj.get("stats").and_then(Value::as_object) else {
        return Err(QmpError::protocol("guest-stats: no `stats` object"));
    };
    let mem = |key| bounded_bytes(stats, key, MAX_GUEST_MEMORY);
    let cumulative = |key| bounded_bytes(stats, key, MAX_GUEST_CUMULATIVE_BYTES);
    let counter = |key| stat(stats, key).filter(|&n| n <= MAX_GUEST_COUNTER);
    let last_update = opt_u64(obj, "last-update")
        .filter(|&s| s > 0)
        .and_then(|s| s.checked_mul(1000))
        .map(Millis);
    Ok(GuestStats {
        total: mem("stat-total-memory"),
        free: mem("stat-free-memory"),
        available: mem("stat-available-memory"),
        disk_caches: mem("stat-disk-caches"),
        swap_in: cumulative("stat-swap-in"),
        swap_out: cumulative("stat-swap-out"),
        major_faults: counter("stat-major-faults"),
        minor_faults: counter("stat-minor-faults"),
        oom_kills: counter("stat-oom-kills"),
        alloc_stalls: counter("stat-alloc-stalls"),
        async_scans: counter("stat-async-scans"),
        direct_scans: counter("stat-direct-scans"),
        async_reclaims: counter("stat-async-reclaims"),
        direct_reclaims: counter("stat-direct-reclaims"),
        last_update,
    })
}

fn stat(stats: &Map<String, Value>, key: &str) -> Option<u64> {
    opt_u64(stats, key).filter(|&n| n != STAT_UNSUPPORTED)
}

fn bounded_bytes(stats: &Map<String, Value>, key: &str, max: Bytes) -> Option<Bytes> {
    stat(stats, key).map(Bytes).filter(|&b| b <= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::testing::arb_json;
    use proptest::prelude::*;

    /// What QEMU 10.0.2 returned for a balloon without a guest driver (-S, no kernel).
    const NO_DRIVER: &str = r#"{"stats": {"stat-htlb-pgalloc": 18446744073709551615, "stat-swap-out": 18446744073709551615, "stat-alloc-stalls": 18446744073709551615, "stat-available-memory": 18446744073709551615, "stat-direct-reclaims": 18446744073709551615, "stat-direct-scans": 18446744073709551615, "stat-htlb-pgfail": 18446744073709551615, "stat-free-memory": 18446744073709551615, "stat-minor-faults": 18446744073709551615, "stat-major-faults": 18446744073709551615, "stat-total-memory": 18446744073709551615, "stat-oom-kills": 18446744073709551615, "stat-async-reclaims": 18446744073709551615, "stat-swap-in": 18446744073709551615, "stat-async-scans": 18446744073709551615, "stat-disk-caches": 18446744073709551615}, "last-update": 0}"#;

    #[test]
    fn no_driver_means_all_unknown() {
        let v: Value = serde_json::from_str(NO_DRIVER).expect("sample");
        assert_eq!(
            parse_guest_stats(&v).expect("parses"),
            GuestStats::default()
        );
    }

    #[test]
    fn reported_stats_map_to_fields() {
        let v = json!({"stats": {
            "stat-total-memory": 990352u64 * 1024,
            "stat-free-memory": 700_000_000u64,
            "stat-available-memory": 800_000_000u64,
            "stat-disk-caches": 50_000_000u64,
            "stat-swap-in": 0, "stat-swap-out": 4096,
            "stat-major-faults": 12, "stat-minor-faults": 3456,
            "stat-oom-kills": 1, "stat-alloc-stalls": 0,
            "stat-htlb-pgalloc": 0
        }, "last-update": 1_795_475_531u64});
        let s = parse_guest_stats(&v).expect("parses");
        assert_eq!(s.total, Some(Bytes(990352 * 1024)));
        assert_eq!(s.free, Some(Bytes(700_000_000)));
        assert_eq!(s.available, Some(Bytes(800_000_000)));
        assert_eq!(s.disk_caches, Some(Bytes(50_000_000)));
        assert_eq!(s.swap_in, Some(Bytes(0)), "a reported zero stays zero");
        assert_eq!(s.swap_out, Some(Bytes(4096)));
        assert_eq!(s.major_faults, Some(12));
        assert_eq!(s.minor_faults, Some(3456));
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!(s.alloc_stalls, Some(0));
        assert_eq!(s.last_update, Some(Millis(1_795_475_531_000)));
    }

    #[test]
    fn bad_values_are_unknown_not_zero() {
        let v = json!({"stats": {
            "stat-free-memory": -1,
            "stat-available-memory": -5,
            "stat-total-memory": (16u64 << 40) + 1,
            "stat-disk-caches": 1.5,
            "stat-swap-in": "12",
            "stat-major-faults": null,
            "stat-minor-faults": (1u64 << 53) + 1,
            "stat-oom-kills": u64::MAX
        }, "last-update": -3});
        assert_eq!(
            parse_guest_stats(&v).expect("parses"),
            GuestStats::default()
        );
    }

    #[test]
    fn bounds_are_inclusive() {
        let v =
            json!({"stats": {"stat-total-memory": 16u64 << 40, "stat-minor-faults": 1u64 << 53}});
        let s = parse_guest_stats(&v).expect("parses");
        assert_eq!(s.total, Some(MAX_GUEST_MEMORY));
        assert_eq!(s.minor_faults, Some(MAX_GUEST_COUNTER));
    }

    #[test]
    fn absurd_last_update_is_dropped() {
        let v = json!({"stats": {}, "last-update": u64::MAX});
        assert_eq!(parse_guest_stats(&v).expect("parses").last_update, None);
    }

    #[test]
    fn wrong_shape_is_protocol_error() {
        for v in [
            json!(null),
            json!([]),
            json!({"last-update": 1}),
            json!({"stats": 3}),
        ] {
            assert!(matches!(
                parse_guest_stats(&v),
                Err(QmpError::Protocol { .. })
            ));
        }
    }

    #[test]
    fn finds_balloon_in_qom_list() {
        let v = json!([
            {"name": "type", "type": "string"},
            {"name": "vm0", "type": "child<virtio-mem-pci>"},
            {"name": "balloon0", "type": "child<virtio-balloon-pci>"}
        ]);
        assert_eq!(balloon_child(&v), Some("balloon0".into()));
        let anon =
            json!([{"name": "device[3]", "type": "child<virtio-balloon-pci-non-transitional>"}]);
        assert_eq!(balloon_child(&anon), Some("device[3]".into()));
        assert_eq!(
            balloon_child(&json!([{"name": "type", "type": "string"}])),
            None
        );
        assert_eq!(balloon_child(&json!({"not": "a list"})), None);
    }

    proptest! {
        #[test]
        fn guest_stats_never_panic_and_respect_bounds(v in arb_json(), stats in arb_json()) {
            let mut wrapped = Map::new();
            wrapped.insert("stats".into(), stats);
            wrapped.insert("last-update".into(), v.clone());
            for input in [v, Value::Object(wrapped)] {
                if let Ok(s) = parse_guest_stats(&input) {
                    for b in [s.total, s.free, s.available, s.disk_caches].into_iter().flatten() {
                        prop_assert!(b <= MAX_GUEST_MEMORY);
                    }
                    for b in [s.swap_in, s.swap_out].into_iter().flatten() {
                        prop_assert!(b <= MAX_GUEST_CUMULATIVE_BYTES);
                    }
                    for n in [s.major_faults, s.minor_faults, s.oom_kills, s.alloc_stalls].into_iter().flatten() {
                        prop_assert!(n <= MAX_GUEST_COUNTER);
                    }
                }
            }
        }

        #[test]
        fn any_u64_stat_is_none_or_itself(n in any::<u64>()) {
            let v = json!({"stats": {"stat-free-memory": n, "stat-oom-kills": n}});
            let s = parse_guest_stats(&v).expect("parses");
            prop_assert_eq!(s.free, (n <= MAX_GUEST_MEMORY.0).then_some(Bytes(n)));
            prop_assert_eq!(s.oom_kills, (n <= MAX_GUEST_COUNTER).then_some(n));
        }
    }
}
