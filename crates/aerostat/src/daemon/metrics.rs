//! Prometheus metrics (prometheus-client). Names and units: `docs/metrics.md`.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use aerostat_core::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabels {
    pub vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub vm: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwapLabels {
    pub vm: String,
    /// `guest` (its own swap, as it reports it), `swap_disk` (QEMU's I/O on its declared swap
    /// disk) or, for swap-ins, `host` (its QEMU's `VmSwap` falling).
    pub side: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub vm: String,
    pub kind: String,
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub balloon_target: Family<VmLabels, Gauge>,
    pub balloon_actual: Family<VmLabels, Gauge>,
    pub configured: Family<VmLabels, Gauge>,
    pub host_available: Gauge,
    pub host_total: Gauge,
    pub host_room: Gauge,
    pub host_unmanaged: Gauge,
    pub decisions: Family<DecisionLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub tick_errors: Counter,
    pub tick_seconds: Gauge<f64, AtomicU64>,
    pub alert_active: Family<AlertLabels, Gauge>,
    pub unmet_need: Gauge,
    pub swap_in: Family<SwapLabels, Gauge>,
    pub swap_out: Family<SwapLabels, Gauge>,
    known_vms: Mutex<BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            balloon_target: Family::default(),
            balloon_actual: Family::default(),
            configured: Family::default(),
            host_available: Gauge::default(),
            host_total: Gauge::default(),
            host_room: Gauge::default(),
            host_unmanaged: Gauge::default(),
            decisions: Family::default(),
            errors: Family::default(),
            tick_errors: Counter::default(),
            tick_seconds: Gauge::default(),
            alert_active: Family::default(),
            unmet_need: Gauge::default(),
            swap_in: Family::default(),
            swap_out: Family::default(),
            known_vms: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "aerostat_vm_balloon_target_bytes",
            "Balloon target last set (guest memory), bytes",
            m.balloon_target.clone(),
        );
        registry.register(
            "aerostat_vm_balloon_actual_bytes",
            "Guest memory as QEMU reports it (query-balloon actual), bytes",
            m.balloon_actual.clone(),
        );
        registry.register(
            "aerostat_vm_configured_bytes",
            "Configured (maximum) guest memory, bytes",
            m.configured.clone(),
        );
        registry.register(
            "aerostat_host_available_bytes",
            "Host (or host cgroup) available memory, bytes",
            m.host_available.clone(),
        );
        registry.register(
            "aerostat_host_total_bytes",
            "Host memory (or the host cgroup's limit), bytes",
            m.host_total.clone(),
        );
        registry.register(
            "aerostat_host_room_bytes",
            "Room for one more guest: capacity less the running guests' targets and overheads, bytes",
            m.host_room.clone(),
        );
        registry.register(
            "aerostat_host_unmanaged_bytes",
            "What the QEMUs behind QMP sockets the daemon could not adopt hold, bytes",
            m.host_unmanaged.clone(),
        );
        registry.register(
            "aerostat_decisions",
            "Balloon actions decided, by VM and rule",
            m.decisions.clone(),
        );
        registry.register(
            "aerostat_vm_errors",
            "Errors talking to a VM, by kind",
            m.errors.clone(),
        );
        registry.register(
            "aerostat_tick_errors",
            "Control ticks that failed as a whole (host unreadable)",
            m.tick_errors.clone(),
        );
        registry.register(
            "aerostat_tick_duration_seconds",
            "Wall time of the last control tick, seconds",
            m.tick_seconds.clone(),
        );
        registry.register(
            "aerostat_alert_active",
            "1 while the last tick raised this alert (what no balloon can fix), else 0",
            m.alert_active.clone(),
        );
        registry.register(
            "aerostat_unmet_need_bytes",
            "Memory guests under pressure asked for and the host could not give, last tick",
            m.unmet_need.clone(),
        );
        registry.register(
            "aerostat_vm_swap_in_bytes_per_second",
            "Swap-in of a guest's memory by side, last tick: guest (its own swap, as it reports), swap_disk (QEMU's reads from its declared swap disk) or host (its QEMU's VmSwap falling)",
            m.swap_in.clone(),
        );
        registry.register(
            "aerostat_vm_swap_out_bytes_per_second",
            "Swap-out of a guest's memory by side, last tick: guest (its own swap, as it reports) or swap_disk (QEMU's writes to its declared swap disk)",
            m.swap_out.clone(),
        );
        for kind in aerostat_core::Alert::KINDS {
            m.alert_active
                .get_or_create(&AlertLabels { kind: kind.into() })
                .set(0);
        }
        Metrics { registry, ..m }
    }

    /// This tick's alerts (every kind present, 0 or 1) and the policy's unmet need.
    pub fn set_alerts(&self, alerts: &[aerostat_core::Alert], unmet: Option<Bytes>) {
        for kind in aerostat_core::Alert::KINDS {
            let active = alerts.iter().any(|a| a.kind() == kind);
            self.alert_active
                .get_or_create(&AlertLabels { kind: kind.into() })
                .set(i64::from(active));
        }
        self.unmet_need
            .set(unmet.map_or(0, |u| i64::try_from(u.0).unwrap_or(i64::MAX)));
    }

    pub fn set_vm(&self, vm: &str, actual: Bytes, target: Option<Bytes>, configured: Bytes) {
        let l = VmLabels { vm: vm.to_string() };
        self.balloon_actual.get_or_create(&l).set(actual.0 as i64);
        self.configured.get_or_create(&l).set(configured.0 as i64);
        if let Some(t) = target {
            self.balloon_target.get_or_create(&l).set(t.0 as i64);
        }
    }

    /// A guest's swap-in and swap-out rates by side (`aerostat_core::swapping`); a side not
    /// measured this tick has no sample.
    pub fn set_swapping(&self, vm: &str, s: Option<&aerostat_core::swapping::Swapping>) {
        let swap_in = [
            ("guest", s.and_then(|s| s.guest_swap_in_bps)),
            ("swap_disk", s.and_then(|s| s.swap_disk_read_bps)),
            ("host", s.and_then(|s| s.host_swap_in_bps)),
        ];
        let swap_out = [
            ("guest", s.and_then(|s| s.guest_swap_out_bps)),
            ("swap_disk", s.and_then(|s| s.swap_disk_write_bps)),
        ];
        for (family, sides) in [
            (&self.swap_in, &swap_in[..]),
            (&self.swap_out, &swap_out[..]),
        ] {
            for &(side, rate) in sides {
                let l = SwapLabels {
                    vm: vm.to_string(),
                    side: side.to_string(),
                };
                match rate {
                    Some(r) => {
                        family
                            .get_or_create(&l)
                            .set(i64::try_from(r).unwrap_or(i64::MAX));
                    }
                    None => {
                        family.remove(&l);
                    }
                }
            }
        }
    }

    /// Drops per-VM gauges of VMs that are gone (counters stay: they are history).
    pub fn forget_vms_except(&self, names: &[String]) {
        let mut known = self.known_vms.lock().unwrap_or_else(|p| p.into_inner());
        for gone in known.iter().filter(|n| !names.contains(n)) {
            let l = VmLabels { vm: gone.clone() };
            for fam in [&self.balloon_target, &self.balloon_actual, &self.configured] {
                fam.remove(&l);
            }
            self.set_swapping(gone, None);
        }
        *known = names.iter().cloned().collect();
    }

    pub fn count_error(&self, vm: &str, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                vm: vm.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use aerostat_core::swapping::{SwapSource, Swapping};
    use prometheus_client::encoding::text::encode;

    use super::*;

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        encode(&mut out, &m.registry).expect("encode");
        out
    }

    /// Each measured side is a sample of its family; a side not measured, or a VM without a
    /// verdict, has none (a stale rate would read as swapping that stopped long ago).
    #[test]
    fn swap_rates_are_samples_only_for_the_sides_measured() {
        let m = Metrics::new();
        let verdict = Swapping {
            source: SwapSource::Guest,
            guest_swap_in_bps: Some(3),
            guest_swap_out_bps: Some(5),
            host_swap_in_bps: None,
            swap_disk_read_bps: None,
            swap_disk_write_bps: Some(7),
            machine_swap_in_bps: None,
            host_swapped: None,
            why: String::new(),
        };
        m.set_swapping("web", Some(&verdict));
        let t = text(&m);
        for line in [
            r#"aerostat_vm_swap_in_bytes_per_second{vm="web",side="guest"} 3"#,
            r#"aerostat_vm_swap_out_bytes_per_second{vm="web",side="guest"} 5"#,
            r#"aerostat_vm_swap_out_bytes_per_second{vm="web",side="swap_disk"} 7"#,
        ] {
            assert!(t.lines().any(|l| l == line), "{line} in\n{t}");
        }
        assert!(!t.contains(r#"side="host""#), "{t}");
        assert!(
            !t.contains(r#"swap_in_bytes_per_second{vm="web",side="swap_disk"}"#),
            "{t}"
        );
        m.set_swapping("web", None);
        let t = text(&m);
        assert!(!t.contains(r#"vm="web""#), "{t}");
        assert!(
            t.contains("# TYPE aerostat_vm_swap_out_bytes_per_second gauge"),
            "{t}"
        );
    }
}
