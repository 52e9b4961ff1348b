//! `proxmox`: Proxmox VE auto-ballooning, rule for rule.
//!
//! Re-implements `auto_ballooning` in pve-manager's `PVE/Service/pvestatd.pm` and
//! `PVE::AutoBalloon::compute_alg1`, with the original's integer and floating-point steps, so
//! the targets agree to the byte (see `docs/baselines.md` for the differential check).
//!
//! # The rules (all sizes in bytes)
//!
//! * `memused = MemTotal − MemAvailable`; `goal = int(MemTotal × target% / 100 − memused)`
//!   (`target%` is the node's `ballooning-target`, 80 by default).
//! * Eligible VMs: balloon driver reporting (`actual` non-zero), `balloon_min` set and non-zero,
//!   not locked for migration, shares ≠ 0 (missing shares count as 1000).
//! * "Enough free" VMs: guest free > 0.25 × `balloon_min` and `actual ≥ balloon_min`; all
//!   others (including VMs without guest stats) are "under pressure".
//! * `|goal| ≤ 10 MiB`: nothing. `goal > 10 MiB` (**grow**): distribute among the VMs under
//!   pressure; if that makes no progress (`rest ≥ goal`), among all eligible VMs. `goal < −10 MiB`
//!   (**shrink**): the VMs with enough free first; if no progress (`rest ≤ goal`), all.
//! * Distribution (`change_func`), repeated in passes until the request is spread, nothing moves
//!   or nothing got clamped: each VM not yet settled wants
//!   `desired = balloon_min + int((Σ(b − balloon_min) + rest) / Σshares × shares)`, where `b` is
//!   its size from the previous pass (or its `actual`), clamped to `[balloon_min, maxmem]`. It
//!   moves toward `desired` by at most 100 MiB **from its `actual` at the start of the cycle**
//!   (so never more than 100 MiB per cycle, whatever the passes do). Growing only when the
//!   request is a grow; shrinking whenever `desired < actual` — so a VM above its
//!   share-proportional size can be shrunk by up to 100 MiB even while the host wants to grow.
//!   A VM whose desired size equals its `actual` is settled.
//! * pvestatd sends `int(target)` for every VM whose target differs from its `actual`.
//!
//! Grows are [`Rule::ProxmoxGrow`], shrinks [`Rule::ProxmoxShrink`].
//!
//! # How aerostat's observation maps onto Proxmox's fields
//!
//! * `MemTotal` = [`HostSample::total`], `MemAvailable` = [`HostSample::available`].
//! * `balloon` = [`VmSample::actual`] (only when [`VmSample::balloon`]: without a balloon device
//!   QEMU's `query-balloon` fails and the VM has no `balloon`); `balloon_min` = [`VmSample::min`]
//!   (not eligible when `None` or 0); `maxmem` = [`VmSample::configured`]; `freemem` =
//!   [`GuestStats::free`]; `shares` = [`VmSample::shares`]; migration lock = [`VmSample::migrating`].
//! * The target percentage is [`PolicySettings::proxmox_ballooning_target`].
//!
//! # Interpretations and deliberate differences
//!
//! * The original has no memory between cycles; neither has this policy.
//! * Targets need not be page-aligned (the original sends whatever the arithmetic gives).
//! * Perl iterates the VMs in hash order; the result does not depend on the order (each pass
//!   computes every VM from the same sums), so VMs are taken in observation order here.
//! * The pass loop is capped at [`MAX_PASSES`] passes, far beyond anything observed; the
//!   original would loop for ever in a case that needed more (none is known).
//! * Since 2025 pve-common's `read_meminfo` sets `memused = MemTotal − MemAvailable` (before:
//!   MemTotal − MemFree − Buffers − Cached); this follows the current code.
//!
//! The policy runs under [`GuardConfig::passthrough`] (floor and configured maximum only), and
//! its proposals are the original's targets. One difference appears only through the
//! controller: a VM below its `balloon_min` climbs back by ≤ 100 MiB per cycle in the original,
//! so its target can be below the minimum, and the controller's floor guard raises it to the
//! minimum at once (see `docs/baselines.md`).
//!
//! [`HostSample::total`]: crate::observation::HostSample::total
//! [`HostSample::available`]: crate::observation::HostSample::available
//! [`VmSample::actual`]: crate::observation::VmSample::actual
//! [`VmSample::balloon`]: crate::observation::VmSample::balloon
//! [`VmSample::min`]: crate::observation::VmSample::min
//! [`VmSample::configured`]: crate::observation::VmSample::configured
//! [`VmSample::shares`]: crate::observation::VmSample::shares
//! [`VmSample::migrating`]: crate::observation::VmSample::migrating
//! [`GuestStats::free`]: crate::observation::GuestStats::free
//! [`PolicySettings::proxmox_ballooning_target`]: crate::policy::PolicySettings::proxmox_ballooning_target

use crate::controller::GuardConfig;
use crate::decision::Rule;
use crate::observation::{Observation, VmSample};
use crate::policy::{Policy, PolicySettings, Proposal, Reason};
use crate::units::Bytes;

/// pvestatd's default `ballooning-target` (percent of host memory in use).
pub const DEFAULT_TARGET_PERCENT: u32 = 80;
/// Largest change of one VM per cycle (`$maxchange`).
pub const MAX_CHANGE: i64 = 100 * 1024 * 1024;
/// Goals of at most this size (either way) do nothing.
pub const DEAD_BAND: i64 = 10 * 1024 * 1024;
/// Shares of a VM whose shares are not set.
pub const DEFAULT_SHARES: i64 = 1000;
/// Safety cap on `change_func`'s passes (see the module docs).
pub const MAX_PASSES: usize = 10_000;

/// One eligible VM, as `compute_alg1` sees it.
#[derive(Clone, Copy, Debug)]
struct Vm {
    /// Index into `Observation::vms`.
    idx: usize,
    balloon: i64,
    balloon_min: i64,
    maxmem: i64,
    shares: i64,
}

fn signed(b: Bytes) -> i64 {
    i64::try_from(b.0).unwrap_or(i64::MAX)
}

/// What `change_func` decided for one VM.
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    /// `$res->{$vmid}`.
    target: Option<i64>,
    /// The share-proportional size of the last pass that moved it.
    desired: i64,
}

/// `change_func`: spread `bytes` over `idlist` (indices into `vms`); returns the rest.
fn change_func(vms: &[Vm], res: &mut [Outcome], idlist: &[usize], bytes: i64) -> i64 {
    let mut rest = bytes;
    let mut repeat = true;
    let mut progress = true;
    let mut done = vec![false; vms.len()];
    let mut passes = 0;

    while rest != 0 && repeat && progress && passes < MAX_PASSES {
        passes += 1;
        repeat = false;
        progress = false;

        let mut shares_total: i64 = 0;
        let mut alloc_old: i64 = 0;
        for &i in idlist.iter().filter(|&&i| !done[i]) {
            let d = &vms[i];
            let balloon = res[i].target.unwrap_or(d.balloon);
            alloc_old += balloon - d.balloon_min;
            shares_total += d.shares;
        }

        let mut changes: i64 = 0;
        let alloc_new = alloc_old + rest;

        for &i in idlist {
            if done[i] {
                continue;
            }
            let d = &vms[i];
            // Perl: int(($alloc_new / $shares_total) * $shares), doubles, truncated toward 0.
            let share = ((alloc_new as f64 / shares_total as f64) * d.shares as f64).trunc() as i64;
            let mut desired = d.balloon_min + share;
            if desired > d.maxmem {
                desired = d.maxmem;
                repeat = true;
            } else if desired < d.balloon_min {
                desired = d.balloon_min;
                repeat = true;
            }

            let balloon = if bytes > 0 && desired - d.balloon > 0 {
                let new = d.balloon + MAX_CHANGE;
                if new > desired { desired } else { new }
            } else if desired - d.balloon < 0 {
                let new = d.balloon - MAX_CHANGE;
                if new > desired { new } else { desired }
            } else {
                done[i] = true;
                continue;
            };

            let diff = balloon - d.balloon;
            if diff != 0 {
                let old = res[i].target.unwrap_or(d.balloon);
                res[i] = Outcome {
                    target: Some(balloon),
                    desired,
                };
                let change = balloon - old;
                if change != 0 {
                    changes += change;
                    progress = true;
                    repeat = true;
                }
            }
        }
        rest -= changes;
    }
    rest
}

/// Proxmox VE auto-ballooning (`compute_alg1`).
#[derive(Debug, Clone)]
pub struct ProxmoxPolicy {
    target_percent: u32,
}

impl Default for ProxmoxPolicy {
    fn default() -> Self {
        ProxmoxPolicy::new()
    }
}

impl ProxmoxPolicy {
    /// With the default 80 % target.
    pub fn new() -> ProxmoxPolicy {
        ProxmoxPolicy {
            target_percent: DEFAULT_TARGET_PERCENT,
        }
    }

    pub fn with_settings(settings: &PolicySettings) -> ProxmoxPolicy {
        ProxmoxPolicy {
            target_percent: settings.proxmox_ballooning_target.min(100),
        }
    }

    /// The VM as `compute_alg1` sees it, when it is eligible.
    fn eligible(idx: usize, vm: &VmSample) -> Option<(Vm, bool)> {
        if !vm.balloon || vm.actual == Bytes::ZERO || vm.migrating || vm.shares == 0 {
            return None;
        }
        let min = vm.min.filter(|m| *m > Bytes::ZERO)?;
        let d = Vm {
            idx,
            balloon: signed(vm.actual),
            balloon_min: signed(min),
            maxmem: signed(vm.configured),
            shares: i64::from(vm.shares),
        };
        let enough_free = vm.stats.free.is_some_and(|free| {
            free > Bytes::ZERO
                && free.as_f64() > d.balloon_min as f64 * 0.25
                && d.balloon >= d.balloon_min
        });
        Some((d, enough_free))
    }
}

fn signed_bytes(v: i64) -> String {
    if v < 0 {
        format!("−{}", Bytes(v.unsigned_abs()))
    } else {
        Bytes(v as u64).to_string()
    }
}

impl Policy for ProxmoxPolicy {
    fn name(&self) -> &'static str {
        "proxmox"
    }

    fn guards(&self) -> GuardConfig {
        GuardConfig::passthrough()
    }

    fn propose_into(&mut self, obs: &Observation, _targets: &[Bytes], out: &mut Vec<Proposal>) {
        let total = signed(obs.host.total);
        let memused = total - signed(obs.host.available);
        let goal = ((i128::from(total) * i128::from(self.target_percent)) as f64 / 100.0
            - memused as f64)
            .trunc() as i64;

        let mut vms = Vec::new();
        let mut pressured = Vec::new();
        let mut enough_free = Vec::new();
        for (i, vm) in obs.vms.iter().enumerate() {
            if let Some((d, free)) = Self::eligible(i, vm) {
                let k = vms.len();
                vms.push(d);
                if free {
                    enough_free.push(k);
                } else {
                    pressured.push(k);
                }
            }
        }
        let all: Vec<usize> = (0..vms.len()).collect();
        let mut res = vec![Outcome::default(); vms.len()];

        if goal > DEAD_BAND {
            let rest = change_func(&vms, &mut res, &pressured, goal);
            if rest >= goal {
                change_func(&vms, &mut res, &all, rest);
            }
        } else if goal < -DEAD_BAND {
            let rest = change_func(&vms, &mut res, &enough_free, goal);
            if rest <= goal {
                change_func(&vms, &mut res, &all, rest);
            }
        } else {
            return;
        }

        let used_pct = if total > 0 {
            memused as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let host_part = format!(
            "host used {:.1}% (target {}%): goal {}",
            used_pct,
            self.target_percent,
            signed_bytes(goal)
        );
        for (k, d) in vms.iter().enumerate() {
            let Some(target) = res[k].target else {
                continue;
            };
            if target == d.balloon {
                continue;
            }
            let vm = &obs.vms[d.idx];
            let grow = target > d.balloon;
            let pressure = if pressured.contains(&k) {
                "under pressure"
            } else {
                "enough free"
            };
            let verb = if grow { "grow" } else { "shrink" };
            let reason = format!(
                "{host_part}; {verb} {} ({pressure}) from {} to {} (share-proportional size {}, \
                 {} shares, step ≤ 100 MiB)",
                vm.name,
                Bytes(d.balloon as u64),
                Bytes(target.max(0) as u64),
                signed_bytes(res[k].desired),
                d.shares
            );
            out.push(Proposal {
                vm: d.idx,
                target: Bytes(target.max(0) as u64),
                rule: if grow {
                    Rule::ProxmoxGrow
                } else {
                    Rule::ProxmoxShrink
                },
                reason: Reason::Text(reason),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(p: &Proposal) -> &str {
        p.reason.text().expect("written up front")
    }
    use crate::observation::HostSample;
    use crate::units::Millis;

    const MIB: i64 = 1024 * 1024;
    const GIB: u64 = 1 << 30;

    /// A host of `total` bytes with `used` bytes in use (MemAvailable = total − used).
    fn host(total: u64, used: u64) -> HostSample {
        HostSample {
            total: Bytes(total),
            free: Bytes(total - used),
            available: Bytes(total - used),
            ..HostSample::default()
        }
    }

    fn vm(name: &str, actual: u64, min: u64, max: u64, free: Option<u64>) -> VmSample {
        let mut v = VmSample::new(name, Bytes(max), Bytes(actual));
        v.min = Some(Bytes(min));
        v.stats.free = free.map(Bytes);
        v
    }

    fn obs(host: HostSample, vms: Vec<VmSample>) -> Observation {
        Observation {
            time: Millis::ZERO,
            host,
            vms,
        }
    }

    fn targets(out: &[Proposal]) -> Vec<(usize, u64)> {
        out.iter().map(|p| (p.vm, p.target.0)).collect()
    }

    #[test]
    fn dead_band_is_strict_ten_mib() {
        let total = 100 * GIB;
        let at_target = total * 8 / 10;
        for (used, moves) in [
            (at_target, false),
            (at_target - 10 * MIB as u64, false),
            (at_target + 10 * MIB as u64, false),
            (at_target - 10 * MIB as u64 - 1, true),
            (at_target + 10 * MIB as u64 + 1, true),
        ] {
            let mut p = ProxmoxPolicy::new();
            let o = obs(
                host(total, used),
                vec![vm("a", 4 * GIB, GIB, 8 * GIB, Some(2 * GIB))],
            );
            assert_eq!(!p.propose(&o, &[]).is_empty(), moves, "used {used}");
        }
    }

    #[test]
    fn grow_is_capped_at_100_mib_per_cycle() {
        let mut p = ProxmoxPolicy::new();
        // Host at 50 %: goal +30 GiB; the VM wants its max but gets +100 MiB.
        let o = obs(
            host(100 * GIB, 50 * GIB),
            vec![vm("a", 2 * GIB, GIB, 8 * GIB, None)],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(targets(&out), vec![(0, 2 * GIB + 100 * MIB as u64)]);
        assert_eq!(out[0].rule, Rule::ProxmoxGrow);
        assert!(
            reason(&out[0]).contains("under pressure"),
            "{}",
            reason(&out[0])
        );
        assert!(reason(&out[0]).contains("host used 50.0% (target 80%)"));
    }

    #[test]
    fn small_grow_is_split_by_shares() {
        let mut p = ProxmoxPolicy::new();
        // goal +30 MiB, two pressured VMs at min 1 GiB, shares 1000 and 2000.
        let total = 100 * GIB;
        let used = total * 8 / 10 - 30 * MIB as u64;
        let mut b = vm("b", GIB, GIB, 8 * GIB, None);
        b.shares = 2000;
        let o = obs(host(total, used), vec![vm("a", GIB, GIB, 8 * GIB, None), b]);
        let out = p.propose(&o, &[]);
        assert_eq!(
            targets(&out),
            vec![(0, GIB + 10 * MIB as u64), (1, GIB + 20 * MIB as u64)]
        );
    }

    #[test]
    fn shrink_takes_from_vms_with_enough_free_first() {
        let mut p = ProxmoxPolicy::new();
        // goal −50 MiB. "a" has plenty free, "b" has none: only "a" shrinks.
        let total = 100 * GIB;
        let used = total * 8 / 10 + 50 * MIB as u64;
        let o = obs(
            host(total, used),
            vec![
                vm("a", 4 * GIB, GIB, 4 * GIB, Some(2 * GIB)),
                vm("b", 4 * GIB, GIB, 4 * GIB, Some(0)),
            ],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(targets(&out), vec![(0, 4 * GIB - 50 * MIB as u64)]);
        assert_eq!(out[0].rule, Rule::ProxmoxShrink);
    }

    #[test]
    fn shrink_falls_back_to_all_when_no_progress() {
        let mut p = ProxmoxPolicy::new();
        // Both under pressure (no stats): the first round has nobody, the second takes from all.
        let total = 100 * GIB;
        let used = total * 8 / 10 + 50 * MIB as u64;
        let o = obs(
            host(total, used),
            vec![
                vm("a", 4 * GIB, GIB, 4 * GIB, None),
                vm("b", 4 * GIB, GIB, 4 * GIB, None),
            ],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(
            targets(&out),
            vec![
                (0, 4 * GIB - 25 * MIB as u64),
                (1, 4 * GIB - 25 * MIB as u64)
            ]
        );
    }

    #[test]
    fn vm_above_its_share_shrinks_even_when_growing() {
        let mut p = ProxmoxPolicy::new();
        // goal +20 MiB; "a" holds far more than its share, "b" sits at its minimum.
        let total = 100 * GIB;
        let used = total * 8 / 10 - 20 * MIB as u64;
        let o = obs(
            host(total, used),
            vec![
                vm("a", 6 * GIB, GIB, 8 * GIB, None),
                vm("b", GIB, GIB, 8 * GIB, None),
            ],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].rule, Rule::ProxmoxShrink);
        assert_eq!(out[0].target.0, 6 * GIB - 100 * MIB as u64);
        assert_eq!(out[1].rule, Rule::ProxmoxGrow);
        assert_eq!(out[1].target.0, GIB + 100 * MIB as u64);
    }

    #[test]
    fn eligibility() {
        let total = 100 * GIB;
        let used = total / 2;
        let base = vm("a", 2 * GIB, GIB, 8 * GIB, None);
        let mut cases: Vec<VmSample> = Vec::new();
        let mut v = base.clone();
        v.min = None;
        cases.push(v);
        let mut v = base.clone();
        v.min = Some(Bytes::ZERO);
        cases.push(v);
        let mut v = base.clone();
        v.balloon = false;
        cases.push(v);
        let mut v = base.clone();
        v.actual = Bytes::ZERO;
        cases.push(v);
        let mut v = base.clone();
        v.migrating = true;
        cases.push(v);
        let mut v = base.clone();
        v.shares = 0;
        cases.push(v);
        for v in cases {
            let mut p = ProxmoxPolicy::new();
            assert!(
                p.propose(&obs(host(total, used), vec![v.clone()]), &[])
                    .is_empty(),
                "{v:?}"
            );
        }
        let mut p = ProxmoxPolicy::new();
        assert_eq!(p.propose(&obs(host(total, used), vec![base]), &[]).len(), 1);
    }

    #[test]
    fn target_percent_is_configurable() {
        let settings = PolicySettings {
            proxmox_ballooning_target: 50,
            ..PolicySettings::default()
        };
        let mut p = ProxmoxPolicy::with_settings(&settings);
        // 60 % used > 50 % target: shrink.
        let o = obs(
            host(100 * GIB, 60 * GIB),
            vec![vm("a", 4 * GIB, GIB, 4 * GIB, Some(2 * GIB))],
        );
        let out = p.propose(&o, &[]);
        assert_eq!(targets(&out), vec![(0, 4 * GIB - 100 * MIB as u64)]);
    }

    #[test]
    fn target_setting_defaults_to_80() {
        let s: PolicySettings = serde_json::from_str(r#"{"reserve": 0}"#).expect("settings");
        assert_eq!(s.proxmox_ballooning_target, 80);
        let s: PolicySettings =
            serde_json::from_str(r#"{"proxmox_ballooning_target": 70}"#).expect("settings");
        assert_eq!(ProxmoxPolicy::with_settings(&s).target_percent, 70);
    }

    #[test]
    fn minimum_is_respected() {
        let mut p = ProxmoxPolicy::new();
        let min = 4 * GIB - 30 * MIB as u64;
        let o = obs(
            host(100 * GIB, 95 * GIB),
            vec![vm("a", 4 * GIB, min, 4 * GIB, Some(2 * GIB))],
        );
        assert_eq!(targets(&p.propose(&o, &[])), vec![(0, min)]);
    }
}
