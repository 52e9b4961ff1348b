//! The controller: runs a policy and guards what it proposes.
//!
//! Guards (each one explained in the action's reason when it changes a target); 4 runs
//! before 3 so the reserve guard sees exactly what will be sent:
//! 1. **bounds**: never below the VM's floor (operator minimum, pinned memory), never above
//!    its configured size;
//! 2. **step**: a target moves at most `max_inflate_step` below / `max_deflate_step` above
//!    the balloon's `actual` per tick (so a restart or a lying balloon cannot cause a jump);
//! 3. **reserve**: Σ targets + overheads ≤ host total − reserve whenever the floors allow it —
//!    growth is cut first, then guests above their floor are shrunk (lowest priority first);
//! 4. **hysteresis**: changes smaller than `min_change` are dropped, and a guest that was just
//!    given memory is not squeezed again within `inflate_hold`.
//!
//! Guards 1-3 are safety; they win over the policy. Guard 4 only suppresses churn.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decision::{Action, ActionKind, Alert, Decision, Rule};
use crate::observation::Observation;
use crate::policy::Policy;
use crate::units::{Bytes, Millis};

/// Which guards run, and their bounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardConfig {
    /// Keep Σ targets + overheads within host total − reserve. `None`: not enforced
    /// (the baselines do not enforce one).
    pub reserve: Option<Bytes>,
    /// Largest inflation (target below `actual`) per tick.
    pub max_inflate_step: Option<Bytes>,
    /// Largest deflation (target above `actual`) per tick.
    pub max_deflate_step: Option<Bytes>,
    /// Dead band: smaller changes are not sent.
    pub min_change: Bytes,
    /// No inflation of a VM within this long after it was deflated.
    pub inflate_hold: Millis,
    /// After a `balloon_stalled` action, the reserve guard leaves that VM alone this long:
    /// its balloon cannot give more, so pushing it only repeats the stall.
    #[serde(default)]
    pub stall_block: Millis,
}

impl GuardConfig {
    /// Only the bounds (floor and configured maximum): what the baselines' originals enforce.
    pub fn passthrough() -> GuardConfig {
        GuardConfig {
            reserve: None,
            max_inflate_step: None,
            max_deflate_step: None,
            min_change: Bytes::ZERO,
            inflate_hold: Millis::ZERO,
            stall_block: Millis::ZERO,
        }
    }
}

/// What the controller remembers per VM between ticks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGuardState {
    /// The last target sent (on adoption: the balloon's `actual`).
    pub target: Bytes,
    /// When the VM was last given memory.
    pub last_deflate: Option<Millis>,
    /// Until when the VM's balloon is known stalled (not to be pushed).
    #[serde(default)]
    pub stalled_until: Option<Millis>,
}

/// Runs one policy under its guards. One `Controller` per host.
#[derive(Debug)]
pub struct Controller {
    policy: Box<dyn Policy>,
    guards: GuardConfig,
    vms: BTreeMap<String, VmGuardState>,
}

/// A target in the making: value plus the rule and reason that will explain it.
#[derive(Clone, Debug)]
struct Pending {
    target: Bytes,
    rule: Rule,
    reason: String,
}

impl Controller {
    /// A controller with the policy's own guard profile.
    pub fn new(policy: Box<dyn Policy>) -> Controller {
        let guards = policy.guards();
        Controller::with_guards(policy, guards)
    }

    pub fn with_guards(policy: Box<dyn Policy>, guards: GuardConfig) -> Controller {
        Controller {
            policy,
            guards,
            vms: BTreeMap::new(),
        }
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    pub fn guards(&self) -> &GuardConfig {
        &self.guards
    }

    /// The target last sent to `vm`, if the controller knows it.
    pub fn target_of(&self, vm: &str) -> Option<Bytes> {
        self.vms.get(vm).map(|s| s.target)
    }

    /// Every known VM's state, by name.
    pub fn states(&self) -> &BTreeMap<String, VmGuardState> {
        &self.vms
    }

    /// One control tick: observe → propose → guard → decide.
    pub fn tick(&mut self, obs: &Observation) -> Decision {
        let sorted;
        let obs = if obs.vms.windows(2).all(|w| w[0].name <= w[1].name) {
            obs
        } else {
            let mut o = obs.clone();
            o.vms.sort_by(|a, b| a.name.cmp(&b.name));
            sorted = o;
            &sorted
        };

        // Forget departed VMs; adopt new ones at their current size.
        self.vms.retain(|name, _| {
            obs.vms
                .binary_search_by(|v| v.name.as_str().cmp(name))
                .is_ok()
        });
        for vm in &obs.vms {
            self.vms
                .entry(vm.name.clone())
                .or_insert_with(|| VmGuardState {
                    target: vm.actual,
                    last_deflate: None,
                    stalled_until: None,
                });
        }

        let current: Vec<Bytes> = obs
            .vms
            .iter()
            .map(|vm| self.vms.get(&vm.name).map_or(vm.actual, |s| s.target))
            .collect();
        let proposals = self.policy.propose(obs, &current);
        let mut pending: Vec<Option<Pending>> = vec![None; obs.vms.len()];
        for p in proposals {
            if let Some(slot) = pending.get_mut(p.vm) {
                *slot = Some(Pending {
                    target: p.target,
                    rule: p.rule,
                    reason: p.reason,
                });
            }
        }

        // Guards 1 and 2: bounds and step, per VM.
        for (i, vm) in obs.vms.iter().enumerate() {
            let Some(p) = pending[i].as_mut() else {
                continue;
            };
            if !vm.balloon || vm.migrating {
                pending[i] = None;
                continue;
            }
            let proposed = p.target;
            let mut t = proposed;
            if let Some(step) = self.guards.max_inflate_step {
                t = t.max((vm.actual - step).min(current[i]));
            }
            if let Some(step) = self.guards.max_deflate_step {
                t = t.min((vm.actual + step).max(current[i]));
            }
            let floor = vm.floor();
            if t < floor {
                t = floor;
                if proposed < floor {
                    p.rule = Rule::GuardFloor;
                    p.reason = format!(
                        "{} (raised from {} to the floor {})",
                        p.reason, proposed, floor
                    );
                }
            }
            if t > vm.configured {
                t = vm.configured;
                if proposed > vm.configured {
                    p.rule = Rule::GuardMax;
                    p.reason = format!(
                        "{} (lowered from {} to the configured {})",
                        p.reason, proposed, vm.configured
                    );
                }
            }
            p.target = t;
        }

        // Guard 4 (hysteresis) runs before guard 3, so that the reserve guard sees exactly
        // the changes that will be sent and its own changes are never dropped.
        for (i, vm) in obs.vms.iter().enumerate() {
            let Some(p) = pending[i].as_ref() else {
                continue;
            };
            let safety = matches!(p.rule, Rule::GuardFloor | Rule::GuardMax);
            let from = current[i];
            let churn = p.target.abs_diff(from) < self.guards.min_change;
            let held = p.target < from
                && self.vms[&vm.name]
                    .last_deflate
                    .is_some_and(|t| obs.time.saturating_sub(t) < self.guards.inflate_hold);
            if p.target == from || (!safety && (churn || held)) {
                pending[i] = None;
            }
        }

        // Guard 3: the host reserve.
        let mut alerts = Vec::new();
        if let Some(reserve) = self.guards.reserve {
            let capacity = obs.host.total - reserve;
            let floors: Bytes = obs
                .vms
                .iter()
                .map(|vm| vm.overhead + if vm.balloon { vm.floor() } else { vm.actual })
                .sum();
            if floors > capacity {
                alerts.push(Alert::FloorsDoNotFit {
                    need: floors,
                    capacity,
                });
            }
            let stalled: Vec<bool> = obs
                .vms
                .iter()
                .enumerate()
                .map(|(i, vm)| {
                    pending[i]
                        .as_ref()
                        .is_some_and(|p| p.rule == Rule::BalloonStalled)
                        || self.vms[&vm.name]
                            .stalled_until
                            .is_some_and(|t| obs.time < t)
                })
                .collect();
            self.guard_reserve(obs, &current, &stalled, &mut pending, capacity);
        }

        // Emit.
        let mut actions = Vec::new();
        for (i, vm) in obs.vms.iter().enumerate() {
            let Some(p) = pending[i].take() else {
                continue;
            };
            let from = current[i];
            if p.target == from {
                continue;
            }
            let state = self
                .vms
                .get_mut(&vm.name)
                .expect("every observed VM was adopted above");
            state.target = p.target;
            if p.target > from {
                state.last_deflate = Some(obs.time);
            }
            if p.rule == Rule::BalloonStalled {
                state.stalled_until = Some(obs.time + self.guards.stall_block);
            }
            actions.push(Action {
                vm: vm.name.clone(),
                kind: ActionKind::Balloon { from, to: p.target },
                rule: p.rule,
                reason: p.reason,
            });
        }

        Decision {
            time: obs.time,
            policy: self.policy.name().to_string(),
            actions,
            alerts,
        }
    }

    /// Cuts growth, then shrinks guests above their floor, until Σ targets + overheads fits
    /// `capacity` or nothing more may be taken this tick.
    fn guard_reserve(
        &self,
        obs: &Observation,
        current: &[Bytes],
        stalled: &[bool],
        pending: &mut [Option<Pending>],
        capacity: Bytes,
    ) {
        let final_of = |i: usize, pending: &[Option<Pending>]| {
            pending[i].as_ref().map_or(current[i], |p| p.target)
        };
        let committed = |pending: &[Option<Pending>]| -> Bytes {
            obs.vms
                .iter()
                .enumerate()
                .map(|(i, vm)| {
                    vm.overhead
                        + if vm.balloon {
                            final_of(i, pending)
                        } else {
                            vm.actual
                        }
                })
                .sum()
        };
        let mut excess = committed(pending) - capacity;
        if excess == Bytes::ZERO {
            return;
        }

        // Growth first: cut every growth proportionally — but never below the floor (a
        // raise *to* the floor is not growth the reserve may take back).
        let base = |i: usize| current[i].max(obs.vms[i].floor());
        let growth: Bytes = (0..obs.vms.len())
            .filter(|&i| !stalled[i])
            .map(|i| final_of(i, pending) - base(i))
            .sum();
        if growth > Bytes::ZERO {
            let cut_fraction = (excess.as_f64() / growth.as_f64()).min(1.0);
            for (i, slot) in pending.iter_mut().enumerate() {
                let Some(p) = slot.as_mut() else { continue };
                // A stalled balloon's give-back is not growth: the memory is the guest's
                // whatever we ask.
                if p.target <= base(i) || stalled[i] {
                    continue;
                }
                let g = p.target - base(i);
                // Round the cut up so the sum of cuts covers the excess.
                let cut = Bytes(((g.as_f64() * cut_fraction).ceil() as u64).min(g.0));
                let new = p.target - cut;
                p.reason = format!(
                    "{} (growth cut from {} to {} to keep the host reserve)",
                    p.reason, p.target, new
                );
                p.rule = Rule::GuardReserve;
                p.target = new;
            }
            excess = committed(pending) - capacity;
        }

        // Then shrink guests above their floor: lowest priority first, most room first.
        let mut order: Vec<usize> = (0..obs.vms.len())
            .filter(|&i| obs.vms[i].balloon && !obs.vms[i].migrating && !stalled[i])
            .collect();
        // Two passes: first only down to what the guest has touched (host-measured RSS
        // minus overhead: taking untouched memory costs nobody anything), then to floors.
        let lowest_in = |i: usize, pass: usize| {
            let vm = &obs.vms[i];
            let mut lo = vm.floor();
            if let Some(step) = self.guards.max_inflate_step {
                lo = lo.max(vm.actual - step);
            }
            if pass == 0
                && let Some(rss) = vm.rss
            {
                lo = lo.max((rss - vm.overhead).min(vm.actual));
            }
            lo.min(vm.configured)
        };
        for pass in 0..2 {
            let lowest = |i: usize| lowest_in(i, pass);
            order.sort_by(|&a, &b| {
                let room = |i: usize| final_of(i, pending) - lowest(i);
                obs.vms[a]
                    .priority
                    .total_cmp(&obs.vms[b].priority)
                    .then(room(b).cmp(&room(a)))
                    .then(a.cmp(&b))
            });
            for &i in &order {
                if excess == Bytes::ZERO {
                    break;
                }
                let t = final_of(i, pending);
                let lo = lowest(i);
                if t <= lo {
                    continue;
                }
                let take = (t - lo).min(excess);
                // A VM whose actual is above its configured size (misreport) is clamped too.
                let new = (t - take).min(obs.vms[i].configured);
                excess = excess - take;
                let vm = &obs.vms[i];
                pending[i] = Some(Pending {
                    target: new,
                    rule: Rule::GuardReserve,
                    reason: format!(
                        "host total {} − reserve {} cannot hold every guest's target; {} shrunk \
                     from {} to {} (priority {})",
                        obs.host.total,
                        self.guards.reserve.unwrap_or_default(),
                        vm.name,
                        t,
                        new,
                        vm.priority
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
