//! How a run is judged (product brief, "How we judge a policy") and what it recorded.

use serde::Serialize;

/// The summary of one policy run on one scenario. Field names are a contract:
/// `docs/simulator.md` defines each one.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub scenario: String,
    pub policy: String,
    pub seed: u64,
    pub duration_s: f64,
    pub vms: usize,
    /// Σ over VMs of the time each one ran, in hours.
    pub vm_hours: f64,
    /// ∫ Σ balloon size dt: memory handed back to the host.
    pub reclaimed_gib_hours: f64,
    /// ∫ Σ max(0, configured − true working set − guest kernel) dt.
    pub oracle_reclaimable_gib_hours: f64,
    /// reclaimed ÷ oracle.
    pub oracle_ratio: f64,
    /// Σ seconds guests stalled on memory (swap-in, refaults, host swap, direct reclaim).
    pub guest_stall_seconds: f64,
    /// Stall seconds ÷ VM seconds, in percent.
    pub stall_percent: f64,
    pub guest_swap_in_gib: f64,
    pub host_swap_out_gib: f64,
    pub host_swap_in_gib: f64,
    pub guest_oom_kills: u64,
    pub host_oom_kills: u64,
    /// Balloon target changes sent.
    pub actions: u64,
    pub peak_host_used_gib: f64,
    /// Seconds during which host free memory was below the reserve.
    pub seconds_below_reserve: f64,
    /// Live migrations that completed (the guest left the host). These three are present
    /// only when the scenario has a `[migration]` table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrations: Option<u64>,
    /// Σ downtime of those migrations (also counted in `guest_stall_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_downtime_seconds: Option<f64>,
    /// Bytes sent by every migration started, cancelled ones included, in GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrated_gib: Option<f64>,
    /// TLB entries the balloons' and devices' takings flushed, summed over guests and
    /// vCPUs (`crate::tlb`). These two are present only when the scenario has a `[tlb]`
    /// table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tlb_entries_flushed: Option<f64>,
    /// Those entries × the refill time: CPU time, not counted in `guest_stall_seconds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tlb_refill_seconds: Option<f64>,
    pub per_vm: Vec<VmSummary>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct VmSummary {
    pub name: String,
    pub reclaimed_gib_hours: f64,
    pub oracle_reclaimable_gib_hours: f64,
    pub stall_seconds: f64,
    pub swap_in_gib: f64,
    pub oom_kills: u64,
    pub actions: u64,
    pub lost: bool,
    /// When it left the host by live migration, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrated_at: Option<f64>,
    /// Its share of `Summary::tlb_entries_flushed`, with a `[tlb]` table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tlb_entries_flushed: Option<f64>,
}

impl Summary {
    /// Rounds floats to 6 significant decimals so JSON output is stable and readable.
    pub fn rounded(mut self) -> Summary {
        let r = |v: &mut f64| *v = (*v * 1e6).round() / 1e6;
        for v in [
            &mut self.duration_s,
            &mut self.vm_hours,
            &mut self.reclaimed_gib_hours,
            &mut self.oracle_reclaimable_gib_hours,
            &mut self.oracle_ratio,
            &mut self.guest_stall_seconds,
            &mut self.stall_percent,
            &mut self.guest_swap_in_gib,
            &mut self.host_swap_out_gib,
            &mut self.host_swap_in_gib,
            &mut self.peak_host_used_gib,
            &mut self.seconds_below_reserve,
        ] {
            r(v);
        }
        for v in [
            &mut self.migration_downtime_seconds,
            &mut self.migrated_gib,
            &mut self.tlb_entries_flushed,
            &mut self.tlb_refill_seconds,
        ]
        .into_iter()
        .flatten()
        {
            r(v);
        }
        for vm in &mut self.per_vm {
            for v in [
                &mut vm.reclaimed_gib_hours,
                &mut vm.oracle_reclaimable_gib_hours,
                &mut vm.stall_seconds,
                &mut vm.swap_in_gib,
            ] {
                r(v);
            }
            if let Some(v) = vm.tlb_entries_flushed.as_mut() {
                r(v);
            }
        }
        self
    }
}

/// Sampled time series for plots and `timeseries.csv`, stored flat for speed.
#[derive(Clone, Debug, Default)]
pub struct TimeSeries {
    /// The policy that ran, for plot titles.
    pub policy: String,
    pub vm_names: Vec<String>,
    pub configured: Vec<f64>,
    pub reserve: f64,
    pub host_memory: f64,
    pub rows: Vec<HostRow>,
    /// `rows.len() × vm_names.len()` entries, row-major.
    pub vm_rows: Vec<VmRow>,
    /// Migrations: (started, ended (if it did), VM), seconds; for plot markers.
    pub events: Vec<(f64, Option<f64>, String)>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct HostRow {
    pub t_s: f64,
    pub used: f64,
    pub guests: f64,
    pub free: f64,
    pub swap_used: f64,
    pub reclaimed: f64,
    pub oracle: f64,
    pub stall_s: f64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct VmRow {
    /// Guest memory now (configured − balloon); 0 when the VM is not running.
    pub actual: f64,
    pub target: f64,
    pub true_ws: f64,
    /// Stall seconds in this sample's window.
    pub stall_s: f64,
}

impl TimeSeries {
    /// The CSV: one row per sample; host columns, then four columns per VM.
    pub fn to_csv(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from(
            "time_s,host_used_bytes,host_guests_bytes,host_free_bytes,host_swap_used_bytes,reclaimed_bytes,oracle_reclaimable_bytes,stall_s",
        );
        for n in &self.vm_names {
            let _ = write!(
                s,
                ",{n}.actual_bytes,{n}.target_bytes,{n}.true_working_set_bytes,{n}.stall_s"
            );
        }
        s.push('\n');
        let n = self.vm_names.len();
        for (k, h) in self.rows.iter().enumerate() {
            let _ = write!(
                s,
                "{},{:.0},{:.0},{:.0},{:.0},{:.0},{:.0},{:.3}",
                h.t_s, h.used, h.guests, h.free, h.swap_used, h.reclaimed, h.oracle, h.stall_s
            );
            for v in &self.vm_rows[k * n..(k + 1) * n] {
                let _ = write!(
                    s,
                    ",{:.0},{:.0},{:.0},{:.3}",
                    v.actual, v.target, v.true_ws, v.stall_s
                );
            }
            s.push('\n');
        }
        s
    }
}
