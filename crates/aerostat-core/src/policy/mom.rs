//! `mom`: oVirt MoM's default balloon policy, rule for rule.
//!
//! Re-implements vdsm's `mom.d/02-balloon.policy` as evaluated by MoM's policy engine
//! (`mom/Policy/Parser.py`, `mom/Entity.py`, `mom/Controllers/Balloon.py`) with vdsm's
//! `mom.conf` (`sample-history-length: 10`, optional guest collectors). Every step below is the
//! original's, with the original's floating-point expressions in the original's order, so the
//! targets agree to the KiB (see `docs/baselines.md` for the differential check).
//!
//! # The rules (all sizes in KiB, as in MoM)
//!
//! * `host_free_percent = StatAvg(mem_free) / mem_available`, where `mem_free` is
//!   MemFree + Buffers + Cached, averaged over the last ≤ 10 host samples, and `mem_available` is
//!   the *latest* MemTotal.
//! * For each guest whose latest `balloon_cur` and `mem_unused` are both known:
//!   * host free < 20 % → **shrink** ([`Rule::MomShrink`]):
//!     `guest_free_percent = 0.20 × (host_free_percent / 0.20)`, or `host_free_percent − 0.05`
//!     when `host_free_percent ≤ 0.05` (negative: forces the guest to swap);
//!     `guest_used = StatAvg(balloon_cur) − StatAvg(mem_unused)`;
//!     `floor = max(balloon_min, guest_used + guest_free_percent × balloon_cur)`;
//!     `target = max(0.95 × balloon_cur, floor)`, sent only if `target ≤ balloon_cur` and
//!     `|target − balloon_cur| > 0.25 % × balloon_cur`;
//!   * otherwise → **grow** ([`Rule::MomGrow`]), only if `balloon_cur < balloon_max`:
//!     `target = min(balloon_max, max(1.05 × balloon_cur, floor))` (same floor), sent only if the
//!     change is more than 0.25 % of `balloon_cur`. The floor can jump straight to `balloon_max`.
//! * Then, for every guest, **minimum guarantee** ([`Rule::MomMinGuarantee`]): if
//!   `balloon_cur < balloon_min` the target is `balloon_min` (this overrides the rule above).
//! * Targets are floats; MoM's Balloon controller truncates them with `int()` before sending, so
//!   every target emitted here is a whole number of KiB.
//!
//! `StatAvg(f)` is the plain mean of the non-null values of `f` among the entity's last ≤ 10
//! samples (`0.0` if there are none); the latest sample counts. Swap and fault counters are never
//! read by this policy.
//!
//! # How aerostat's observation maps onto MoM's fields
//!
//! * host `mem_free` = ⌊[`HostSample::free`]/1024⌋ + ⌊[`HostSample::buffers_cached`]/1024⌋
//!   (MoM adds the three meminfo KiB values); `mem_available` = ⌊[`HostSample::total`]/1024⌋.
//! * guest `balloon_cur` = ⌊[`VmSample::actual`]/1024⌋, `balloon_min` = ⌊[`VmSample::min`]/1024⌋
//!   (0 when not set), `balloon_max` = ⌊[`VmSample::configured`]/1024⌋ — all three missing
//!   (`None`, as vdsm reports an empty `balloonInfo`) when [`VmSample::balloon`] is false.
//! * guest `mem_unused` = ⌊[`GuestStats::free`]/1024⌋ (the guest's MemFree), `None` when missing.
//! * Targets are returned as bytes: the integer KiB × 1024.
//!
//! # Interpretations and deliberate differences
//!
//! * **Ballooning enabled.** vdsm's `00-defines.policy` starts with `balloonEnabled 0` and the
//!   engine sets it to 1 when the cluster enables ballooning; with 0 MoM never shrinks. This
//!   policy is MoM with ballooning enabled.
//! * **One sample per observation.** MoM's host monitor, guest monitors and policy engine run on
//!   separate 15 s timers; here every observation adds one host sample and one sample per guest,
//!   then the policy runs, so the history is "the last 10 observations".
//! * **Guests that leave are forgotten.** vdsm lists only VMs whose status is `Up`; a VM that
//!   disappears — or is migrating (status `Migration Source`) — loses its monitor and history,
//!   and starts afresh when it comes back. The same happens here.
//! * **The None-vs-None crash (deliberate difference).** In the original, a guest without balloon
//!   information (no balloon device: `balloon_cur` and `balloon_min` are `None`) makes the
//!   minimum-guarantee rule evaluate `None < None`; Python raises `TypeError`, the whole policy
//!   evaluation fails and *no guest* gets a target in that cycle. Here that guest is skipped
//!   (the rule's documented intent: "Memory information is missing, ballooning disabled") and the
//!   other guests are decided as usual.
//! * A host `MemTotal` of 0 makes the original divide by zero and send nothing; here too.
//! * Only the balloon rules are modelled; MoM's KSM, CPU-tune and IO-tune policies (evaluated in
//!   the same pass) have no aerostat action.
//!
//! The policy runs under [`GuardConfig::passthrough`] (floor and configured maximum only), so the
//! controller passes its targets through unchanged.
//!
//! [`HostSample::free`]: crate::observation::HostSample::free
//! [`HostSample::buffers_cached`]: crate::observation::HostSample::buffers_cached
//! [`HostSample::total`]: crate::observation::HostSample::total
//! [`VmSample::actual`]: crate::observation::VmSample::actual
//! [`VmSample::min`]: crate::observation::VmSample::min
//! [`VmSample::configured`]: crate::observation::VmSample::configured
//! [`VmSample::balloon`]: crate::observation::VmSample::balloon
//! [`GuestStats::free`]: crate::observation::GuestStats::free

use std::collections::{BTreeMap, VecDeque};

use crate::controller::GuardConfig;
use crate::decision::Rule;
use crate::observation::{Observation, VmSample};
use crate::policy::{Policy, Proposal, Reason};
use crate::units::Bytes;

/// vdsm `mom.conf`: `sample-history-length`.
pub const SAMPLE_HISTORY_LENGTH: usize = 10;
/// Host free below this fraction of MemTotal: the host is under pressure.
pub const PRESSURE_THRESHOLD: f64 = 0.20;
/// Host free at or below this fraction: critical pressure, guests are pushed into swap.
pub const PRESSURE_CRITICAL: f64 = 0.05;
/// Free memory an unconstrained guest would like to keep.
pub const MIN_GUEST_FREE_PERCENT: f64 = 0.20;
/// Largest change of a guest per cycle, as a fraction of its current memory.
pub const MAX_BALLOON_CHANGE_PERCENT: f64 = 0.05;
/// Smaller changes (fraction of current memory) are not sent.
pub const MIN_BALLOON_CHANGE_PERCENT: f64 = 0.0025;

/// One host sample, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostRow {
    /// MemFree + Buffers + Cached.
    mem_free: u64,
    /// MemTotal (MoM's `mem_available`).
    mem_available: u64,
}

/// One guest sample, in KiB. `None` is MoM's null (an optional field that was not collected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GuestRow {
    balloon_cur: Option<u64>,
    balloon_min: Option<u64>,
    balloon_max: Option<u64>,
    mem_unused: Option<u64>,
}

fn kib(b: Bytes) -> u64 {
    b.0 / Bytes::KIB
}

fn push<T>(history: &mut VecDeque<T>, row: T) {
    history.push_back(row);
    while history.len() > SAMPLE_HISTORY_LENGTH {
        history.pop_front();
    }
}

/// MoM's `Entity.StatAvg`: mean of the non-null values, `0.0` when there are none.
fn stat_avg<T>(history: &VecDeque<T>, field: impl Fn(&T) -> Option<u64>) -> f64 {
    let mut total: u128 = 0;
    let mut n: u64 = 0;
    for v in history.iter().filter_map(field) {
        total += u128::from(v);
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        // Exact for sums below 2^53 KiB (8 EiB), where Python's int / int is also exact.
        total as f64 / n as f64
    }
}

/// The shrink/grow scaling of the guest's desired free memory.
fn guest_free_percent(host_free_percent: f64) -> f64 {
    if host_free_percent <= PRESSURE_CRITICAL {
        -0.05 + host_free_percent
    } else {
        MIN_GUEST_FREE_PERCENT * (host_free_percent / PRESSURE_THRESHOLD)
    }
}

/// `change_big_enough`: more than 0.25 % of the current size.
fn change_big_enough(cur: u64, new_val: f64) -> bool {
    (new_val - cur as f64).abs() > MIN_BALLOON_CHANGE_PERCENT * cur as f64
}

/// Python's `max(a, b)`: `b` only when strictly greater.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

fn kib_f64_to_bytes(v: f64) -> Bytes {
    // `int()` truncates toward zero; targets are never negative (≥ 0.95 × balloon_cur).
    Bytes::kib(v.trunc().max(0.0) as u64)
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn kib_display(v: f64) -> Bytes {
    Bytes::from_f64(v * Bytes::KIB as f64)
}

/// oVirt MoM's default balloon policy (vdsm `02-balloon.policy`).
#[derive(Debug, Default, Clone)]
pub struct MomPolicy {
    host: VecDeque<HostRow>,
    guests: BTreeMap<String, VecDeque<GuestRow>>,
}

impl MomPolicy {
    pub fn new() -> MomPolicy {
        MomPolicy::default()
    }

    /// Records this observation's samples: one host row, one row per guest that is `Up`.
    fn record(&mut self, obs: &Observation) {
        push(
            &mut self.host,
            HostRow {
                mem_free: kib(obs.host.free) + kib(obs.host.buffers_cached),
                mem_available: kib(obs.host.total),
            },
        );
        let up = |name: &str| obs.vms.iter().any(|vm| vm.name == name && !vm.migrating);
        self.guests.retain(|name, _| up(name));
        for vm in obs.vms.iter().filter(|vm| !vm.migrating) {
            let row = if vm.balloon {
                GuestRow {
                    balloon_cur: Some(kib(vm.actual)),
                    balloon_min: Some(vm.min.map_or(0, kib)),
                    balloon_max: Some(kib(vm.configured)),
                    mem_unused: vm.stats.free.map(kib),
                }
            } else {
                GuestRow {
                    balloon_cur: None,
                    balloon_min: None,
                    balloon_max: None,
                    mem_unused: vm.stats.free.map(kib),
                }
            };
            push(self.guests.entry(vm.name.clone()).or_default(), row);
        }
    }

    /// `shrink_guest` / `grow_guest` for one guest whose latest balloon_cur and mem_unused exist.
    fn balloon_logic(
        vm: &SampleView<'_>,
        host_free_percent: f64,
        history: &VecDeque<GuestRow>,
    ) -> Option<(f64, Rule, String)> {
        let cur = vm.cur;
        let curf = cur as f64;
        let gfp = guest_free_percent(host_free_percent);
        let guest_used = stat_avg(history, |r| r.balloon_cur) - stat_avg(history, |r| r.mem_unused);
        let balloon_min = py_max(vm.min as f64, guest_used + gfp * curf);
        let why_floor = |balloon_min: f64| {
            if balloon_min > vm.min as f64 {
                format!("guest used {} + {} free", kib_display(guest_used), pct(gfp))
            } else {
                format!("minimum {}", Bytes::kib(vm.min))
            }
        };
        if host_free_percent < PRESSURE_THRESHOLD {
            let step = curf * (1.0 - MAX_BALLOON_CHANGE_PERCENT);
            let mut size = step;
            let mut limited_by = "at most 5% per cycle".to_string();
            if size < balloon_min {
                size = balloon_min;
                limited_by = why_floor(balloon_min);
            }
            if size <= curf && change_big_enough(cur, size) {
                let reason = format!(
                    "host free {} < {}: shrink {} from {} to {} ({})",
                    pct(host_free_percent),
                    pct(PRESSURE_THRESHOLD),
                    vm.name,
                    Bytes::kib(cur),
                    kib_f64_to_bytes(size),
                    limited_by
                );
                return Some((size, Rule::MomShrink, reason));
            }
            None
        } else {
            let max = vm.max;
            if cur >= max {
                return None;
            }
            let mut size = curf * (1.0 + MAX_BALLOON_CHANGE_PERCENT);
            let mut limited_by = "at most 5% per cycle".to_string();
            if size < balloon_min {
                size = balloon_min;
                limited_by = why_floor(balloon_min);
            }
            if size > max as f64 {
                size = max as f64;
                limited_by = "its maximum".to_string();
            }
            if change_big_enough(cur, size) {
                let reason = format!(
                    "host free {} ≥ {}: grow {} from {} to {} ({})",
                    pct(host_free_percent),
                    pct(PRESSURE_THRESHOLD),
                    vm.name,
                    Bytes::kib(cur),
                    kib_f64_to_bytes(size),
                    limited_by
                );
                return Some((size, Rule::MomGrow, reason));
            }
            None
        }
    }
}

/// The latest balloon values of a guest that has a balloon.
struct SampleView<'a> {
    name: &'a str,
    cur: u64,
    min: u64,
    max: u64,
}

impl Policy for MomPolicy {
    fn name(&self) -> &'static str {
        "mom"
    }

    fn guards(&self) -> GuardConfig {
        GuardConfig::passthrough()
    }

    fn propose_into(&mut self, obs: &Observation, _targets: &[Bytes], out: &mut Vec<Proposal>) {
        self.record(obs);
        let Some(host) = self.host.back().copied() else {
            return;
        };
        if host.mem_available == 0 {
            // The original divides by zero and sends nothing.
            return;
        }
        let host_free_percent =
            stat_avg(&self.host, |r| Some(r.mem_free)) / host.mem_available as f64;

        for (i, vm) in obs.vms.iter().enumerate() {
            if let Some((target, rule, reason)) = self.decide_guest(vm, host_free_percent) {
                out.push(Proposal {
                    vm: i,
                    target,
                    rule,
                    reason: Reason::Text(reason),
                });
            }
        }
    }
}

impl MomPolicy {
    fn decide_guest(&self, vm: &VmSample, host_free_percent: f64) -> Option<(Bytes, Rule, String)> {
        let history = self.guests.get(&vm.name)?;
        let latest = *history.back()?;
        let (Some(cur), Some(min)) = (latest.balloon_cur, latest.balloon_min) else {
            // No balloon information. The original crashes on `None < None` in the
            // minimum-guarantee rule and sends nothing to anyone; we skip this guest only.
            return None;
        };
        // vdsm reports the three balloon fields together.
        let max = latest.balloon_max.unwrap_or(cur);
        let view = SampleView {
            name: &vm.name,
            cur,
            min,
            max,
        };
        let mut decided = None;
        if latest.mem_unused.is_some() {
            decided = Self::balloon_logic(&view, host_free_percent, history)
                .map(|(size, rule, reason)| (kib_f64_to_bytes(size), rule, reason));
        }
        if cur < min {
            decided = Some((
                Bytes::kib(min),
                Rule::MomMinGuarantee,
                format!(
                    "{} holds {} < its guaranteed minimum {}: raise it to the minimum",
                    vm.name,
                    Bytes::kib(cur),
                    Bytes::kib(min)
                ),
            ));
        }
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(p: &Proposal) -> &str {
        p.reason.text().expect("written up front")
    }
    use crate::observation::{HostSample, VmSample};
    use crate::units::Millis;

    const GIB_KIB: u64 = 1 << 20;

    fn host(total_gib: u64, free_kib: u64) -> HostSample {
        HostSample {
            total: Bytes::gib(total_gib),
            free: Bytes::kib(free_kib),
            available: Bytes::kib(free_kib),
            ..HostSample::default()
        }
    }

    fn vm(
        name: &str,
        cur_kib: u64,
        min_kib: u64,
        max_kib: u64,
        unused_kib: Option<u64>,
    ) -> VmSample {
        let mut v = VmSample::new(name, Bytes::kib(max_kib), Bytes::kib(cur_kib));
        v.min = Some(Bytes::kib(min_kib));
        v.stats.free = unused_kib.map(Bytes::kib);
        v
    }

    fn obs(t: u64, host: HostSample, vms: Vec<VmSample>) -> Observation {
        Observation {
            time: Millis::secs(t),
            host,
            vms,
        }
    }

    fn kib_target(p: &Proposal) -> u64 {
        assert_eq!(p.target.0 % 1024, 0, "MoM targets are whole KiB");
        p.target.0 / 1024
    }

    #[test]
    fn shrinks_by_five_percent_under_pressure() {
        let mut p = MomPolicy::new();
        // host free 10 % of 16 GiB; guest 4 GiB with 3 GiB free: used 1 GiB.
        let o = obs(
            0,
            host(16, 16 * GIB_KIB / 10),
            vec![vm("web-3", 4 * GIB_KIB, 0, 4 * GIB_KIB, Some(3 * GIB_KIB))],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, Rule::MomShrink);
        assert_eq!(
            kib_target(&out[0]),
            (4.0 * GIB_KIB as f64 * (1.0 - 0.05)) as u64
        );
        assert!(
            reason(&out[0]).contains("host free 10.0% < 20.0%"),
            "{}",
            reason(&out[0])
        );
        assert!(reason(&out[0]).contains("web-3"));
    }

    #[test]
    fn shrink_stops_at_used_plus_scaled_free() {
        let mut p = MomPolicy::new();
        // host free 10 %: guest_free_percent = 0.2 × (0.1/0.2) ≈ 0.1.
        // guest 4 GiB, 0.2 GiB free: used 3.8 GiB; floor = 3.8 + 0.4 = 4.2 GiB > cur: no shrink.
        let cur = 4 * GIB_KIB;
        let o = obs(
            0,
            host(16, 16 * GIB_KIB / 10),
            vec![vm("db", cur, 0, cur, Some(cur / 20))],
        );
        assert!(p.propose(&o, &[]).is_empty());
        // 1 GiB free: used 3 GiB; floor = 3 GiB + 0.1 × 4 GiB = 3.4 GiB < 0.95 × 4 GiB → 3.8 GiB.
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(16, 16 * GIB_KIB / 10),
            vec![vm("db", cur, 0, cur, Some(GIB_KIB))],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(kib_target(&out[0]), (cur as f64 * 0.95) as u64);
        // 0.6 GiB free: used 3.4; floor 3.4 + 0.4 = 3.8...; use 0.5 GiB free: floor 3.5+0.4=3.9.
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(16, 16 * GIB_KIB / 10),
            vec![vm("db", cur, 0, cur, Some(GIB_KIB / 2))],
        );
        let out = p.propose(&o, &[]);
        let hfp = (16 * GIB_KIB / 10) as f64 / (16 * GIB_KIB) as f64;
        let gfp = 0.2 * (hfp / 0.2);
        let expect = (cur as f64 - (GIB_KIB / 2) as f64) + gfp * cur as f64;
        assert_eq!(kib_target(&out[0]), expect as u64);
        assert!(
            reason(&out[0]).contains("guest used"),
            "{}",
            reason(&out[0])
        );
    }

    #[test]
    fn critical_pressure_makes_guest_free_negative() {
        assert!((guest_free_percent(0.04) - (-0.01)).abs() < 1e-12);
        assert!((guest_free_percent(0.05) - 0.0).abs() < 1e-12);
        assert!((guest_free_percent(0.10) - 0.10).abs() < 1e-12);
        // 1 % of 4 GiB free; host free 2 %: floor = 99 % − 3 % of 4 GiB = 96 % > 95 %.
        let mut p = MomPolicy::new();
        let cur = 4 * GIB_KIB;
        let free = cur / 100;
        let o = obs(
            0,
            host(16, 16 * GIB_KIB / 50),
            vec![vm("db", cur, 0, cur, Some(free))],
        );
        let out = p.propose(&o, &[]);
        let hfp = (16 * GIB_KIB / 50) as f64 / (16 * GIB_KIB) as f64;
        let expect = ((cur - free) as f64) + (-0.05 + hfp) * cur as f64;
        assert_eq!(kib_target(&out[0]), expect as u64);
        assert!(expect < cur as f64);
    }

    #[test]
    fn shrink_respects_balloon_min_and_dead_band() {
        let mut p = MomPolicy::new();
        let cur = 4 * GIB_KIB;
        // min just below cur: the 0.25 % rule drops the change.
        let min = cur - cur / 1000;
        let o = obs(
            0,
            host(16, GIB_KIB),
            vec![vm("a", cur, min, cur, Some(3 * GIB_KIB))],
        );
        assert!(p.propose(&o, &[]).is_empty());
        // min at 3.9 GiB: target is the minimum.
        let mut p = MomPolicy::new();
        let min = cur - cur / 40;
        let o = obs(
            0,
            host(16, GIB_KIB),
            vec![vm("a", cur, min, cur, Some(3 * GIB_KIB))],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(kib_target(&out[0]), min);
        assert!(reason(&out[0]).contains("minimum"), "{}", reason(&out[0]));
    }

    #[test]
    fn grows_by_five_percent_or_to_used_plus_free_capped_at_max() {
        let cur = 2 * GIB_KIB;
        let max = 4 * GIB_KIB;
        // Lots of guest free: +5 %.
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(16, 8 * GIB_KIB),
            vec![vm("a", cur, 0, max, Some(GIB_KIB))],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(out[0].rule, Rule::MomGrow);
        assert_eq!(kib_target(&out[0]), (cur as f64 * 1.05) as u64);
        // Host half free: guest_free_percent 0.5; no guest free: used 2 GiB + 1 GiB = 3 GiB.
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(16, 8 * GIB_KIB),
            vec![vm("a", cur, 0, max, Some(0))],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(kib_target(&out[0]), 3 * GIB_KIB);
        // Host 90 % free: 2 GiB + 0.9 × 2 GiB = 3.8 GiB; with max 3 GiB the target jumps to max.
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(10, 9 * GIB_KIB),
            vec![vm("a", cur, 0, 3 * GIB_KIB, Some(0))],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(kib_target(&out[0]), 3 * GIB_KIB);
        assert!(reason(&out[0]).contains("maximum"));
        // At max: nothing.
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(16, 8 * GIB_KIB),
            vec![vm("a", max, 0, max, Some(0))],
        );
        assert!(p.propose(&o, &[]).is_empty());
    }

    #[test]
    fn grow_dead_band() {
        // max only 0.1 % above cur: change too small.
        let cur = 4 * GIB_KIB;
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(16, 8 * GIB_KIB),
            vec![vm("a", cur, 0, cur + cur / 1000, Some(0))],
        );
        assert!(p.propose(&o, &[]).is_empty());
    }

    #[test]
    fn min_guarantee_overrides_and_needs_no_guest_stats() {
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(16, GIB_KIB),
            vec![vm("a", GIB_KIB, 2 * GIB_KIB, 4 * GIB_KIB, None)],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, Rule::MomMinGuarantee);
        assert_eq!(kib_target(&out[0]), 2 * GIB_KIB);
    }

    #[test]
    fn guests_without_guest_stats_are_skipped() {
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            host(16, GIB_KIB),
            vec![vm("a", 4 * GIB_KIB, 0, 4 * GIB_KIB, None)],
        );
        assert!(p.propose(&o, &[]).is_empty());
    }

    #[test]
    fn guest_without_balloon_is_skipped_not_fatal() {
        let mut p = MomPolicy::new();
        let mut nb = vm("b", 4 * GIB_KIB, 0, 4 * GIB_KIB, Some(GIB_KIB));
        nb.balloon = false;
        let o = obs(
            0,
            host(16, GIB_KIB),
            vec![vm("a", 4 * GIB_KIB, 0, 4 * GIB_KIB, Some(3 * GIB_KIB)), nb],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].vm, 0);
    }

    #[test]
    fn averages_last_ten_samples() {
        let mut p = MomPolicy::new();
        let cur = 4 * GIB_KIB;
        // Eleven samples: host free 100 % first, then 10 × 10 %: only the last ten count.
        let mut last = Vec::new();
        for t in 0..11 {
            let free = if t == 0 {
                16 * GIB_KIB
            } else {
                16 * GIB_KIB / 10
            };
            last = p.propose(
                &obs(
                    t,
                    host(16, free),
                    vec![vm("a", cur, 0, cur, Some(3 * GIB_KIB))],
                ),
                &[],
            );
        }
        assert_eq!(last[0].rule, Rule::MomShrink);
        // Two samples: (100 % + 10 %) / 2 = 55 % → grow branch (nothing: at max).
        let mut p = MomPolicy::new();
        p.propose(
            &obs(
                0,
                host(16, 16 * GIB_KIB),
                vec![vm("a", cur, 0, cur, Some(0))],
            ),
            &[],
        );
        let out = p.propose(
            &obs(
                1,
                host(16, 16 * GIB_KIB / 10),
                vec![vm("a", cur, 0, cur, Some(0))],
            ),
            &[],
        );
        assert!(out.is_empty());
        assert!(
            (stat_avg(&p.host, |r| Some(r.mem_free)) - 0.55 * (16 * GIB_KIB) as f64).abs() < 1.0
        );
    }

    #[test]
    fn guest_used_is_averaged_and_nulls_are_ignored() {
        let mut p = MomPolicy::new();
        let cur = 4 * GIB_KIB;
        let max = 8 * GIB_KIB;
        // mem_unused: 2 GiB, missing, 0 → average 1 GiB; balloon_cur 4 GiB: used 3 GiB.
        for (t, unused) in [Some(2 * GIB_KIB), None, Some(0)].into_iter().enumerate() {
            let out = p.propose(
                &obs(
                    t as u64,
                    host(16, 8 * GIB_KIB),
                    vec![vm("a", cur, 0, max, unused)],
                ),
                &[],
            );
            if t == 2 {
                // host 50 % free → guest_free_percent 0.5: 3 GiB + 2 GiB = 5 GiB.
                assert_eq!(kib_target(&out[0]), 5 * GIB_KIB);
            }
        }
    }

    #[test]
    fn departed_and_migrating_guests_are_forgotten() {
        let mut p = MomPolicy::new();
        let a = vm("a", 4 * GIB_KIB, 0, 8 * GIB_KIB, Some(0));
        p.propose(&obs(0, host(16, 8 * GIB_KIB), vec![a.clone()]), &[]);
        assert_eq!(p.guests["a"].len(), 1);
        p.propose(&obs(1, host(16, 8 * GIB_KIB), vec![]), &[]);
        assert!(!p.guests.contains_key("a"));
        p.propose(&obs(2, host(16, 8 * GIB_KIB), vec![a.clone()]), &[]);
        let mut m = a.clone();
        m.migrating = true;
        assert!(
            p.propose(&obs(3, host(16, 8 * GIB_KIB), vec![m]), &[])
                .is_empty()
        );
        assert!(!p.guests.contains_key("a"));
    }

    #[test]
    fn zero_memtotal_sends_nothing() {
        let mut p = MomPolicy::new();
        let o = obs(
            0,
            HostSample::default(),
            vec![vm("a", GIB_KIB, 2 * GIB_KIB, 4 * GIB_KIB, None)],
        );
        assert!(p.propose(&o, &[]).is_empty());
    }

    #[test]
    fn controller_passes_targets_through() {
        let mut c = crate::Controller::new(Box::new(MomPolicy::new()));
        let o = obs(
            0,
            host(16, 16 * GIB_KIB / 10),
            vec![vm("web-3", 4 * GIB_KIB, 0, 4 * GIB_KIB, Some(3 * GIB_KIB))],
        );
        let d = c.tick(&o);
        assert_eq!(d.actions.len(), 1);
        assert_eq!(
            d.actions[0].balloon_target(),
            Some(Bytes::kib((4.0 * GIB_KIB as f64 * 0.95) as u64))
        );
    }
}
