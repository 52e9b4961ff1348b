//! `[ksm] control = true`: every `interval`, oVirt MoM's KSM policy (`aerostat_core::ksm`) on
//! the host's memory and the guests' size, applied through KSM's sysfs controls.

use aerostat_core::ksm::{KsmPolicy, KsmSample, KsmTuning};
use aerostat_core::{HostSample, Millis, VmSample};
use aerostat_host::KsmSysfs;
use serde_json::json;

use super::config::KsmConfig;

pub struct KsmRunner {
    policy: KsmPolicy,
    sysfs: KsmSysfs,
    interval: Millis,
    next_at: Option<Millis>,
    /// The tuning last applied (or printed, in a dry run).
    last: Option<KsmTuning>,
}

impl KsmRunner {
    pub fn new(config: &KsmConfig) -> KsmRunner {
        KsmRunner {
            policy: KsmPolicy::new(),
            sysfs: KsmSysfs::new(&config.dir),
            interval: config.interval,
            next_at: None,
            last: None,
        }
    }

    /// Decides when an interval is due; applies a changed tuning (not in a dry run) and returns
    /// the JSON line that says so.
    pub fn tick(
        &mut self,
        now: Millis,
        host: &HostSample,
        vms: &[VmSample],
        dry_run: bool,
    ) -> Option<serde_json::Value> {
        if self.next_at.is_some_and(|t| now < t) {
            return None;
        }
        self.next_at = Some(now + self.interval);
        let state = match self.sysfs.read() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read KSM's state; KSM left as it is");
                return None;
            }
        };
        let sample = KsmSample {
            total: host.total,
            // MoM's free memory: MemFree + Buffers + Cached.
            free: host.free + host.buffers_cached,
            // What QEMU marks mergeable: the guests' memory.
            shareable: vms.iter().map(|v| v.configured).sum(),
            pages_to_scan: state.pages_to_scan,
        };
        let (tuning, reason) = self.policy.decide(&sample);
        if self.last == Some(tuning) {
            return None;
        }
        if !dry_run && let Err(e) = self.sysfs.apply(tuning) {
            tracing::warn!(error = %e, "cannot tune KSM");
            return None;
        }
        self.last = Some(tuning);
        tracing::info!(%reason, "KSM tuned");
        let (run, sleep_ms, pages_to_scan) = match tuning {
            KsmTuning::Stop => (0, None, None),
            KsmTuning::Run {
                sleep_ms,
                pages_to_scan,
            } => (1, Some(sleep_ms), Some(pages_to_scan)),
        };
        Some(json!({
            "event": "ksm",
            "time": now.0,
            "run": run,
            "sleep_millisecs": sleep_ms,
            "pages_to_scan": pages_to_scan,
            "saved": state.pages_sharing * 4096,
            "reason": reason,
            "dry_run": dry_run,
        }))
    }
}
