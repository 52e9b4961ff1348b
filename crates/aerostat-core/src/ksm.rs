//! When KSM (kernel same-page merging: the seeds' "transparent page sharing") should run on the
//! host, and how hard: oVirt MoM's KSM policy (vdsm `mom.d/03-ksm.policy`), rule for rule.
//!
//! Merging costs CPU (ksmd compares pages) and time (a merged page is copied on the next
//! write), so it runs only when it can matter: when free memory is short, or when guests are
//! promised so much that the host could run short. Every interval:
//! - `threshold` = 20 % of the host's memory; `free` = MemFree + Buffers + Cached, averaged
//!   over the last 10 samples (MoM's `StatAvg`); `shareable` = the guest memory QEMU offers to
//!   KSM.
//! - **Stop** when `threshold + shareable < total` and `free > threshold`: the guests could
//!   not use up the host, and it has room now.
//! - Otherwise **run**, sleeping `max(10, 10 × 16 GiB ÷ total)` ms between scans (bigger hosts
//!   scan more often), with `pages_to_scan` +300 while `free < threshold` and −50 otherwise,
//!   kept within [64, 1250].
//!
//! Left out of MoM's policy: its NUMA rule (unmerge before changing `merge_across_nodes`,
//! which aerostat never changes) and the engine's switch to turn KSM off (the operator's
//! `[ksm] control`). MoM estimates `shareable` as the virtual size of every `qemu` process;
//! aerostat counts the guest memory of the VMs it drives, which is what QEMU marks mergeable
//! (a QEMU's virtual size also counts address space it never maps — several GiB for a small
//! guest — so with MoM's estimate KSM practically never stops).

use crate::units::Bytes;

/// Samples averaged for `free` (MoM's `StatAvg` keeps 10).
pub const SAMPLES: usize = 10;
/// `free` below this share of the host's memory is pressure.
pub const FREE_SHARE: f64 = 0.20;
/// `pages_to_scan` steps and bounds.
pub const PAGES_BOOST: i64 = 300;
pub const PAGES_DECAY: i64 = -50;
pub const PAGES_MIN: i64 = 64;
pub const PAGES_MAX: i64 = 1250;

/// What the host's KSM should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KsmTuning {
    /// `run` = 0: ksmd stops; pages merged so far stay merged.
    Stop,
    /// `run` = 1, with these tunables.
    Run { sleep_ms: u64, pages_to_scan: u64 },
}

/// One interval's facts about the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KsmSample {
    /// MemTotal.
    pub total: Bytes,
    /// MemFree + Buffers + Cached.
    pub free: Bytes,
    /// Guest memory offered to KSM.
    pub shareable: Bytes,
    /// ksmd's `pages_to_scan` now (the step is taken from it).
    pub pages_to_scan: u64,
}

/// MoM's KSM policy, with its 10-sample average of free memory.
#[derive(Clone, Debug, Default)]
pub struct KsmPolicy {
    free: std::collections::VecDeque<f64>,
}

impl KsmPolicy {
    pub fn new() -> KsmPolicy {
        KsmPolicy::default()
    }

    /// The tuning for this interval, and why (a sentence for the log).
    pub fn decide(&mut self, s: &KsmSample) -> (KsmTuning, String) {
        if self.free.len() == SAMPLES {
            self.free.pop_front();
        }
        self.free.push_back(s.free.as_f64());
        let free = self.free.iter().sum::<f64>() / self.free.len() as f64;
        let total = s.total.as_f64();
        let threshold = total * FREE_SHARE;
        let shareable = s.shareable.as_f64();
        if threshold + shareable < total && free > threshold {
            let why = format!(
                "free {} > 20 % of {} and the guests' {} cannot use up the rest: KSM stops",
                Bytes::from_f64(free),
                s.total,
                s.shareable
            );
            return (KsmTuning::Stop, why);
        }
        // MoM works in KiB and integer division: 10 ms for a 16 GiB host.
        let total_kib = (s.total.0 >> 10).max(1);
        let sleep_ms = (10 * 16_777_216 / total_kib).max(10);
        let (step, pressed) = if free < threshold {
            (PAGES_BOOST, "under")
        } else {
            (PAGES_DECAY, "not under")
        };
        let pages = i64::try_from(s.pages_to_scan).unwrap_or(PAGES_MAX);
        let pages_to_scan = (pages + step).clamp(PAGES_MIN, PAGES_MAX) as u64;
        let why = format!(
            "free {} is {pressed} 20 % of {} (guests offer {}): KSM runs, {pages_to_scan} pages every {sleep_ms} ms",
            Bytes::from_f64(free),
            s.total,
            s.shareable
        );
        (
            KsmTuning::Run {
                sleep_ms,
                pages_to_scan,
            },
            why,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(total_gib: u64, free_gib: f64, shareable_gib: u64, pages: u64) -> KsmSample {
        KsmSample {
            total: Bytes::gib(total_gib),
            free: Bytes::from_f64(free_gib * Bytes::GIB as f64),
            shareable: Bytes::gib(shareable_gib),
            pages_to_scan: pages,
        }
    }

    #[test]
    fn a_roomy_host_whose_guests_cannot_use_it_up_stops_ksm() {
        let mut p = KsmPolicy::new();
        assert_eq!(p.decide(&sample(64, 40.0, 32, 100)).0, KsmTuning::Stop);
    }

    #[test]
    fn promised_guests_or_short_free_memory_run_it() {
        // 64 GiB promised on a 64 GiB host, plenty free: runs, and slows down.
        let mut p = KsmPolicy::new();
        let (t, _) = p.decide(&sample(64, 40.0, 64, 100));
        assert_eq!(
            t,
            KsmTuning::Run {
                sleep_ms: 10,
                pages_to_scan: 64
            }
        );
        // Free memory short: speeds up by 300, to at most 1250.
        let mut p = KsmPolicy::new();
        let (t, why) = p.decide(&sample(8, 1.0, 4, 1000));
        assert_eq!(
            t,
            KsmTuning::Run {
                sleep_ms: 20,
                pages_to_scan: 1250
            },
            "{why}"
        );
    }

    #[test]
    fn free_memory_is_the_mean_of_ten_samples() {
        let mut p = KsmPolicy::new();
        // Nine roomy samples, then a short one: the mean is still roomy.
        for _ in 0..9 {
            p.decide(&sample(64, 40.0, 32, 100));
        }
        assert_eq!(p.decide(&sample(64, 5.0, 32, 100)).0, KsmTuning::Stop);
        // Ten short ones later, the oldest roomy ones have left the window.
        for _ in 0..9 {
            p.decide(&sample(64, 5.0, 32, 100));
        }
        assert!(matches!(
            p.decide(&sample(64, 5.0, 32, 100)).0,
            KsmTuning::Run {
                pages_to_scan: 400,
                ..
            }
        ));
    }

    #[test]
    fn bigger_hosts_scan_more_often() {
        let mut p = KsmPolicy::new();
        let sleep = |p: &mut KsmPolicy, gib| match p.decide(&sample(gib, 0.0, gib, 64)).0 {
            KsmTuning::Run { sleep_ms, .. } => sleep_ms,
            KsmTuning::Stop => unreachable!("no free memory"),
        };
        assert_eq!(sleep(&mut p, 2), 80);
        assert_eq!(sleep(&mut p, 16), 10);
        assert_eq!(sleep(&mut p, 256), 10);
    }
}
