//! The controller: runs a policy and guards what it proposes.
//!
//! Guards (each one explained in the action's reason when it changes a target); 4 runs
//! before 3 so the reserve guard sees exactly what will be sent:
//! 1. **bounds**: never below the VM's floor (operator minimum, pinned memory), never above
//!    its configured size;
//! 2. **step**: a target moves at most `max_inflate_step` below / `max_deflate_step` above
//!    the balloon's `actual` per tick (so a restart or a lying balloon cannot cause a jump);
//! 3. **reserve**: Σ targets + overheads ≤ host total − reserve (+ what KSM saves now,
//!    `HostSample::capacity`; − what the host holds outside the balloons' claims that host
//!    swap cannot, `kept_memory`) whenever the floors allow it —
//!    memory guests never touched (host RSS) is taken first, then growth is cut, then
//!    guests above their floor are shrunk, strictly by priority (a guest's touched memory
//!    only once every lower-priority guest whose balloon follows is at its floor, even if
//!    that takes ticks). Growth cuts and touched memory wait while the host still has room
//!    (the growth let through plus the excess, or plus its reserve, available) and the
//!    untouched memory the step bound holds back covers the excess. Balloons that do not
//!    move count for nothing; waiting and holding by priority last 30 s at most, counted
//!    from the last tick in which the balloons handed memory back at a step's pace;
//! 4. **hysteresis**: changes smaller than `min_change` are dropped (unless they give a guest
//!    memory it is missing, or all of its memory, or are the bounds' — which skip the dead
//!    band except for a move of mere rounding away from safety), and a guest that was just
//!    given memory is not squeezed again within `inflate_hold` (the bounds' actions skip the
//!    hold); growth the reserve guard cuts to rounding is cut whole. Rounding: less than
//!    1 MiB, or `min_change` if that is smaller (so a passthrough profile drops nothing).
//!
//! Guards 1-3 are safety; they win over the policy. Guard 4 only suppresses churn.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::decision::{Action, ActionKind, Alert, Decision, Rule};
use crate::observation::{Observation, VmSample};
use crate::per_vm::PerVm;
use crate::planner::escape::trend::Trend;
use crate::planner::escape::{MIN_UNMET, floors_held, hot_memory_stays};
use crate::policy::{Policy, Proposal, Reason, WorkingSet};
use crate::units::{Bytes, Millis};

mod blind;
pub(crate) mod kept_memory;

/// Growth the reserve guard's proportional cut leaves below this, or a bound's move away
/// from safety this small, is rounding, not memory a guest can use or give: it is not sent
/// (by a controller with a dead band at least this wide).
const ROUNDING_NOISE: Bytes = Bytes::mib(1);

/// How long the reserve guard may leave an excess to the next ticks — waiting for untouched
/// memory (`can_wait`), or holding higher-priority guests' touched memory while
/// lower-priority ones give a step a tick — before it cuts growth and squeezes every guest
/// after all. Only balloons that follow their targets count as giving memory
/// (`balloon_follows`); this bounds the rest (balloons that move, but too slowly).
const RESERVE_WAIT_LIMIT: Millis = Millis(30_000);
/// Memory the balloons must hand back per tick for the wait to count as progress, not
/// creeping (`RESERVE_WAIT_LIMIT`).
const RESERVE_PROGRESS_PER_TICK: Bytes = Bytes::mib(256);

/// Whether `vm`'s balloon follows its targets: it is not still a whole inflation step
/// (`VmSample::following_slack`) above the last target it was sent (a balloon that did not
/// move last tick — stuck, or not yet flagged as stalled — gives nothing in the next ticks
/// either).
fn balloon_follows(vm: &VmSample, current_target: Bytes, step: Option<Bytes>) -> bool {
    step.is_none_or(|step| vm.actual < current_target + vm.following_slack(step))
}

/// How far the reserve guard shrinks a guest (never below its floor, nor by more than a
/// step per tick).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Take {
    /// Down to its RSS, only for guests whose RSS is known and that are not growing.
    Untouched,
    /// Down to its RSS when known, else by a step.
    UntouchedOrStep,
    /// Down to its hot working set as the policy estimates it (never below its floor): free
    /// memory and cold page cache, whose loss costs the guest nothing.
    AboveHot,
    /// Down to its anonymous working set: the page cache it re-reads goes too, at a
    /// refault's cost — not yet what it would swap or be OOM-killed for.
    AboveAnon,
    /// Down to its floor.
    Touched,
}

/// What the reserve guard did with an excess.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReserveOutcome {
    /// None was left (or untouched memory closed it this tick).
    Fits,
    /// Left to the untouched memory the next ticks take.
    Waited,
    /// Taken from growth and touched memory, as far as allowed.
    Squeezed,
}

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

    /// A move this small is ROUNDING_NOISE under this profile: never more than its dead
    /// band, so a profile without one (passthrough) drops nothing.
    fn rounding(&self) -> Bytes {
        ROUNDING_NOISE.min(self.min_change)
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
    /// Since when its QEMU has held well more than its balloon claims (`kept_memory`).
    #[serde(default)]
    pub kept_since: Option<Millis>,
    /// The policy's working set for it over the last minutes, for the escape's outlook.
    #[serde(skip)]
    pub trend: Trend,
    /// The most it has been seen to touch beyond its swap since the policy last had a
    /// working set for it at a minute's sample (`trend`): what the reserve guard keeps of it
    /// until its last pass while the policy has none (`blind::hold`).
    #[serde(default)]
    pub blind_hold: Option<Bytes>,
}

/// Runs one policy under its guards. One `Controller` per host.
#[derive(Debug)]
pub struct Controller {
    policy: Box<dyn Policy>,
    guards: GuardConfig,
    /// Per VM of the last observation, in its order.
    vms: PerVm<VmGuardState>,
    /// Buffers reused every tick: the simulator ticks a controller millions of times.
    scratch: Scratch,
    /// Since when Σ targets has been over the reserve (the guard waited, or squeezed):
    /// `RESERVE_WAIT_LIMIT` counts from here. `None` once it fits.
    reserve_wait_since: Option<Millis>,
    /// Σ `actual` of the ballooned VMs at the last tick: while it falls, balloons are
    /// handing memory back and the wait goes on (`reserve_wait_since` restarts).
    last_ballooned: Option<Bytes>,
    /// Memory balloons claimed to have given back and the host still held, this tick, as
    /// far as the reserve guard counts it as used (`kept_memory::counted`).
    kept: Bytes,
}

#[derive(Debug, Default)]
struct Scratch {
    proposals: Vec<Proposal>,
    pending: Vec<Option<Pending>>,
    current: Vec<Bytes>,
    stalled: Vec<bool>,
    order: Vec<usize>,
    /// Per VM: the policy's working-set estimate, floor ≤ anon ≤ hot.
    working_set: Vec<WorkingSet>,
}

/// A target in the making: value plus the rule and what will explain it.
#[derive(Debug)]
struct Pending {
    target: Bytes,
    rule: Rule,
    why: Why,
}

/// The makings of an action's reason. Most pending targets are dropped (dead band,
/// unchanged), so the text is written only for the actions that are sent.
#[derive(Debug)]
enum Why {
    /// The policy's reason, plus what the guards did to its target, in order.
    Policy {
        reason: Reason,
        bound: Option<Bound>,
        /// (from, to) when the reserve guard cut the growth.
        growth_cut: Option<(Bytes, Bytes)>,
    },
    /// The reserve guard shrank the VM from `from` to `to`.
    Shrunk { from: Bytes, to: Bytes },
}

/// A bound guard that moved the policy's target.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Floor { proposed: Bytes, floor: Bytes },
    Max { proposed: Bytes, configured: Bytes },
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
            vms: PerVm::new(),
            scratch: Scratch::default(),
            reserve_wait_since: None,
            last_ballooned: None,
            kept: Bytes::ZERO,
        }
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// The policy's [`Policy::unmet_need`] from the last tick.
    pub fn unmet_need(&self) -> Option<Bytes> {
        self.policy.unmet_need()
    }

    /// Memory balloons claimed to have given back while the host still held it, and memory
    /// of guests the controller does not drive (`HostSample::unmanaged`), as far as the last
    /// tick counted it against the host's capacity (`kept_memory`): what guests can be given
    /// is the host's capacity less this, for the escape as for the reserve guard.
    pub fn kept_memory(&self) -> Bytes {
        self.kept
    }

    pub fn guards(&self) -> &GuardConfig {
        &self.guards
    }

    /// How fast `vm`'s working set grows at `now`, per second, as the policy has estimated
    /// it over the last minutes ([`Trend`]; 0 for a policy that does not estimate one).
    pub fn growth_of(&self, vm: &str, now: Millis) -> Bytes {
        self.vms
            .get(vm)
            .map_or(Bytes::ZERO, |s| s.trend.growth(now))
    }

    /// The target last sent to `vm`, if the controller knows it.
    pub fn target_of(&self, vm: &str) -> Option<Bytes> {
        self.vms.get(vm).map(|s| s.target)
    }

    /// Every known VM's state, by name.
    pub fn states(&self) -> impl Iterator<Item = (&str, &VmGuardState)> {
        self.vms.iter()
    }

    /// One control tick: observe → propose → guard → decide.
    pub fn tick(&mut self, obs: &Observation) -> Decision {
        let sorted;
        // The same VMs as last tick were sorted then (the usual case, checked cheaply, and
        // only once: a name comparison per VM per tick shows in the simulator's profile).
        let same_vms = self.vms.matches(&obs.vms);
        let obs = if same_vms || obs.vms.is_sorted_by(|a, b| a.name <= b.name) {
            obs
        } else {
            let mut o = obs.clone();
            o.vms.sort_by(|a, b| a.name.cmp(&b.name));
            sorted = o;
            &sorted
        };

        // Forget departed VMs; adopt new ones at their current size.
        if !same_vms {
            self.vms.sync(&obs.vms, |vm| VmGuardState {
                target: vm.actual,
                last_deflate: None,
                stalled_until: None,
                kept_since: None,
                trend: Trend::default(),
                blind_hold: None,
            });
        }

        let Scratch {
            mut proposals,
            mut pending,
            mut current,
            mut stalled,
            mut order,
            mut working_set,
        } = std::mem::take(&mut self.scratch);
        // Memory balloons claim to have given back and the host still holds, and memory of
        // guests no one here drives: used, as far as the policy's fit and the reserve guard
        // are concerned, once host swap cannot hold it.
        let mut alerts = Vec::new();
        let mut kept_total = Bytes::ZERO;
        for (i, vm) in obs.vms.iter().enumerate() {
            if let Some(kept) = kept_memory::kept(vm, &mut self.vms[i].kept_since, obs.time) {
                kept_total += kept;
                alerts.push(Alert::BalloonKeepsMemory {
                    vm: vm.name.clone(),
                    kept,
                });
            }
        }
        self.kept = kept_memory::counted(kept_total + obs.host.unmanaged, &obs.host);
        self.policy.host_keeps(self.kept);

        current.clear();
        current.extend((0..obs.vms.len()).map(|i| self.vms[i].target));
        proposals.clear();
        self.policy.propose_into(obs, &current, &mut proposals);
        for (i, vm) in obs.vms.iter().enumerate() {
            let state = &mut self.vms[i];
            // Kept for every VM, as the arithmetic is cheaper than asking the policy every
            // tick (a virtual call and a search per VM: 6 % of the simulator's time); it
            // starts over at each minute's sample the policy has an estimate for.
            state.blind_hold = blind::hold(state.blind_hold, vm);
            if state.trend.due(obs.time)
                && let Some(ws) = self.policy.working_set(i)
            {
                state.trend.push(obs.time, ws.anon);
                state.blind_hold = blind::hold(None, vm);
            }
        }
        pending.clear();
        pending.resize_with(obs.vms.len(), || None);
        for p in proposals.drain(..) {
            if let Some(slot) = pending.get_mut(p.vm) {
                *slot = Some(Pending {
                    target: p.target,
                    rule: p.rule,
                    why: Why::Policy {
                        reason: p.reason,
                        bound: None,
                        growth_cut: None,
                    },
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
                t = t.max(vm.inflate_floor(step, current[i]).min(current[i]));
            }
            if let Some(step) = self.guards.max_deflate_step {
                t = t.min((vm.actual + step).max(current[i]));
            }
            // What virtio-mem devices can hold: a target between two block steps is
            // carried out at the step above, and the controller keeps that one, so the
            // guest's `actual` can reach it.
            t = vm.on_blocks(t);
            let floor = vm.floor();
            let mut bound = None;
            if t < floor {
                t = floor;
                if proposed < floor {
                    bound = Some((Rule::GuardFloor, Bound::Floor { proposed, floor }));
                }
            }
            if t > vm.configured {
                t = vm.configured;
                if proposed > vm.configured {
                    bound = Some((
                        Rule::GuardMax,
                        Bound::Max {
                            proposed,
                            configured: vm.configured,
                        },
                    ));
                }
            }
            if let Some((rule, b)) = bound {
                p.rule = rule;
                if let Why::Policy { bound, .. } = &mut p.why {
                    *bound = Some(b);
                }
            }
            p.target = t;
        }

        // Guard 4 (hysteresis) runs before guard 3, so that the reserve guard sees exactly
        // the changes that will be sent and its own changes are never dropped.
        for i in 0..obs.vms.len() {
            let Some(p) = pending[i].as_ref() else {
                continue;
            };
            let from = current[i];
            // A bound's target skips the hold and the dead band — the squeeze a short host
            // needs does not wait — except a move away from safety of mere rounding: a
            // proposal below the floor lifted to a floor the guest is a byte above (that
            // guest was sent down to its floor and a byte back, every 31 s for ever).
            // Dropping every such shrink below `min_change` instead OOM-killed a desktop on
            // reviewer-3 `ksm-vdi-clones`: those few MiB were the short host's.
            let bound = matches!(p.rule, Rule::GuardFloor | Rule::GuardMax);
            let toward_safety = match p.rule {
                Rule::GuardFloor => p.target > from,
                Rule::GuardMax => p.target < from,
                _ => false,
            };
            // Giving a guest all its memory back, or memory it is missing, is never churn:
            // a guest thrashing 12 MiB below its configured size would otherwise stay there
            // (`unseen-6246`: sixteen 1 GiB guests whose working set outgrew them).
            let relief = p.target > from
                && (p.target == obs.vms[i].configured || p.rule == Rule::DeflatePressure);
            let dead_band = if bound {
                self.guards.rounding()
            } else {
                self.guards.min_change
            };
            let churn = !relief && !toward_safety && p.target.abs_diff(from) < dead_band;
            let held = p.target < from
                && self.vms[i]
                    .last_deflate
                    .is_some_and(|t| obs.time.saturating_sub(t) < self.guards.inflate_hold);
            if p.target == from || churn || (!bound && held) {
                pending[i] = None;
            }
        }

        // Guard 3: the host reserve.
        if let Some(unmet) = self.policy.unmet_need().filter(|u| *u >= MIN_UNMET) {
            alerts.push(Alert::WorkingSetsDoNotFit { unmet });
        }
        if let Some(reserve) = self.guards.reserve {
            let capacity = obs.host.capacity(reserve) - self.kept;
            let floors = floors_held(obs);
            if floors > capacity {
                alerts.push(Alert::FloorsDoNotFit {
                    need: floors,
                    capacity,
                });
            }
            stalled.clear();
            stalled.extend((0..obs.vms.len()).map(|i| {
                pending[i]
                    .as_ref()
                    .is_some_and(|p| p.rule == Rule::BalloonStalled)
                    || self.vms[i].stalled_until.is_some_and(|t| obs.time < t)
            }));
            // Waiting for untouched memory, and holding a guest's touched memory while
            // lower-priority guests give theirs a step a tick, are for a gap the next ticks
            // close; a gap that stays open (balloons that creep) is closed by every guest
            // after RESERVE_WAIT_LIMIT.
            // Balloons handing memory back at the step bound are not creeping: while Σ actual
            // falls by a step's worth a tick, the wait restarts (`unseen-7372`: five 32 GiB
            // guests needed 45 s of 512 MiB steps to give back untouched memory; at 30 s the
            // guard squeezed 1 GiB guests below their working sets with 30 GiB of the host
            // free, and OOM-killed them).
            let ballooned: Bytes = obs
                .vms
                .iter()
                .filter(|v| v.balloon && !v.migrating)
                .map(|v| v.actual)
                .sum();
            let handing_back = self
                .last_ballooned
                .is_some_and(|last| last.saturating_sub(ballooned) >= RESERVE_PROGRESS_PER_TICK);
            self.last_ballooned = Some(ballooned);
            // Only a wait still running restarts: once it ran out it stays out until the gap
            // has closed (below), or the guard's own squeeze would restart it.
            if handing_back
                && self
                    .reserve_wait_since
                    .is_some_and(|t| obs.time.saturating_sub(t) < RESERVE_WAIT_LIMIT)
            {
                self.reserve_wait_since = Some(obs.time);
            }
            let may_wait = self
                .reserve_wait_since
                .is_none_or(|t| obs.time.saturating_sub(t) < RESERVE_WAIT_LIMIT);
            let outcome = self.guard_reserve(
                obs,
                &current,
                &stalled,
                &mut working_set,
                &mut pending,
                &mut order,
                capacity,
                floors,
                may_wait,
            );
            // Once the wait ran out, it stays out until the gap has closed: waiting again
            // on the next tick would hand back the growth just cut, tick after tick.
            self.reserve_wait_since = match outcome {
                ReserveOutcome::Fits => None,
                ReserveOutcome::Waited | ReserveOutcome::Squeezed => {
                    Some(self.reserve_wait_since.unwrap_or(obs.time))
                }
            };
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
            let state = &mut self.vms[i];
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
                reason: self.reason_text(obs, i, p.why),
            });
        }

        self.scratch = Scratch {
            proposals,
            pending,
            current,
            stalled,
            order,
            working_set,
        };
        Decision {
            time: obs.time,
            policy: Cow::Borrowed(self.policy.name()),
            actions,
            alerts,
        }
    }

    /// Writes the reason of an action that is sent.
    fn reason_text(&self, obs: &Observation, i: usize, why: Why) -> String {
        match why {
            Why::Policy {
                reason,
                bound,
                growth_cut,
            } => {
                let mut text = match reason {
                    Reason::Text(text) => text,
                    Reason::Deferred => self.policy.explain(obs, i),
                };
                match bound {
                    Some(Bound::Floor { proposed, floor }) => {
                        let _ = write!(text, " (raised from {proposed} to the floor {floor})");
                    }
                    Some(Bound::Max {
                        proposed,
                        configured,
                    }) => {
                        let _ = write!(
                            text,
                            " (lowered from {proposed} to the configured {configured})"
                        );
                    }
                    None => {}
                }
                if let Some((from, to)) = growth_cut {
                    let _ = write!(
                        text,
                        " (growth cut from {from} to {to} to keep the host reserve)"
                    );
                }
                text
            }
            Why::Shrunk { from, to } => {
                let vm = &obs.vms[i];
                let kept = match (self.kept > Bytes::ZERO, obs.host.unmanaged > Bytes::ZERO) {
                    (false, _) => String::new(),
                    (true, false) => format!(
                        " − {} kept by balloons that claim to have given it",
                        self.kept
                    ),
                    (true, true) => format!(
                        " − {} held outside the balloons' claims (by guests aerostat does \
                         not drive: {}, by balloons that kept it), beyond what host swap holds",
                        self.kept, obs.host.unmanaged
                    ),
                };
                format!(
                    "host total {} − reserve {}{kept} cannot hold every guest's target; {} shrunk \
                     from {} to {} (priority {})",
                    obs.host.total,
                    self.guards.reserve.unwrap_or_default(),
                    vm.name,
                    from,
                    to,
                    vm.priority
                )
            }
        }
    }

    /// Whether the reserve guard may leave `excess` for the next ticks instead of cutting
    /// growth and taking memory guests have touched. Yes when both hold:
    /// - the host has room now: on top of the growth the wait lets through (memory a guest
    ///   under pressure touches at once), the excess is available, or at least the whole
    ///   `reserve` is. Checked every tick, so the wait ends once guests touching new memory
    ///   dent the reserve — by one tick's worth of touches at most;
    /// - the guests in `order` (those the guard may shrink) hold at least that much
    ///   memory they have not touched (host-measured RSS) which only the step bound keeps
    ///   this tick from taking: the next ticks take it without evicting anyone's cache.
    ///
    /// This is what a daemon starting on a full host meets, and a host where big guests
    /// boot at once: their untouched gigabytes go at a step per tick, and squeezing the
    /// guests already running into their page cache (or cutting the memory a guest under
    /// pressure asks for) would close, a few ticks early, a gap that closes anyway.
    fn can_wait(
        obs: &Observation,
        current: &[Bytes],
        pending: &[Option<Pending>],
        order: &[usize],
        excess: Bytes,
        reserve: Bytes,
        step: Option<Bytes>,
    ) -> bool {
        let growth: Bytes = pending
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some(p.as_ref()?.target - current[i].max(obs.vms[i].floor())))
            .sum();
        if obs.host.available < growth + excess.min(reserve) {
            return false;
        }
        let untouched: Bytes = order
            .iter()
            .filter(|&&i| balloon_follows(&obs.vms[i], current[i], step))
            .filter_map(|&i| {
                let vm = &obs.vms[i];
                let rss = vm.rss?;
                // A pending raise is memory the guest has not got yet, not untouched memory.
                let target = pending[i]
                    .as_ref()
                    .map_or(current[i], |p| p.target.min(current[i]));
                Some(target - vm.floor().max(rss - vm.overhead))
            })
            .sum();
        untouched >= excess
    }

    /// Takes untouched memory, then cuts growth, then shrinks guests above their floor,
    /// until Σ targets + overheads fits `capacity` or nothing more may be taken this tick
    /// — unless it may leave the excess to the next ticks (`can_wait`, allowed only when
    /// `may_wait`). `floors`: Σ floor demand, computed once per tick by the caller.
    #[allow(clippy::too_many_arguments)]
    fn guard_reserve(
        &self,
        obs: &Observation,
        current: &[Bytes],
        stalled: &[bool],
        working_set: &mut Vec<WorkingSet>,
        pending: &mut [Option<Pending>],
        order: &mut Vec<usize>,
        capacity: Bytes,
        floors: Bytes,
        may_wait: bool,
    ) -> ReserveOutcome {
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
        if committed(pending) <= capacity {
            return ReserveOutcome::Fits;
        }
        // The policy's working-set estimates, only on ticks with an excess: floor ≤ anon ≤
        // hot. Where the policy has none (a guest without fresh stats), both layers are the
        // most the host has seen it touch beyond its swap (`blind::hold`), or the floor when
        // that is unknown: its touched memory goes only in the last pass, with everyone's.
        working_set.clear();
        working_set.extend(obs.vms.iter().enumerate().map(|(i, vm)| {
            let floor = vm.floor();
            let ws = self.policy.working_set(i).unwrap_or_else(|| {
                let held = self.vms[i].blind_hold.unwrap_or(floor);
                WorkingSet {
                    anon: held,
                    hot: held,
                }
            });
            let anon = ws.anon.max(floor);
            WorkingSet {
                anon,
                hot: ws.hot.max(anon),
            }
        }));
        let working_set: &[WorkingSet] = working_set;
        // Memory a virtio-mem guest without a trimming balloon holds above its hot layer that
        // the guard would take (free memory and cold cache: the first passes take down to that
        // layer) but its whole blocks keep: up to the block step at or above the layer —
        // headroom the policy gave it included. The guest does not need it, so the host backs
        // it only as the guest fills it with cold cache, which host swap can hold, as it holds
        // `static`'s guests' at their configured sizes. As far as host swap can, it is not
        // counted in the excess. (Seed 1000's 100 generated scenarios with 1 GiB blocks and
        // no balloon, session 28: 2 GiB guests whose 1.3 GiB need rounded up to 2 GiB did not
        // fit, and the guard squeezed them to their 1 GiB of boot memory and cut their growth
        // back — `unseen-1010`: 225,927 stall-s where `static` has none.)
        let grid_rounding = |pending: &[Option<Pending>]| -> Bytes {
            let rounding: Bytes = (0..obs.vms.len())
                .filter_map(|i| {
                    let vm = &obs.vms[i];
                    vm.grid()?;
                    self.policy.working_set(i)?;
                    if !vm.balloon || vm.migrating {
                        return None;
                    }
                    let hot = working_set[i].hot;
                    Some(final_of(i, pending).min(vm.on_blocks(hot)) - hot)
                })
                .sum();
            rounding.min(obs.host.swap_total)
        };
        // Host swap the rounding leaves for the rest of the excess (`over_take`), kept with
        // the excess: `recount` sets both.
        let swap_spare = std::cell::Cell::new(Bytes::ZERO);
        let recount = |pending: &[Option<Pending>]| {
            let rounding = grid_rounding(pending);
            swap_spare.set(obs.host.swap_total - rounding);
            (committed(pending) - capacity) - rounding
        };
        let mut excess = recount(pending);
        if excess == Bytes::ZERO {
            return ReserveOutcome::Fits;
        }

        // Guests the guard may shrink, and how far (`Take`): first only down to what the
        // guest has touched (host-measured RSS minus overhead: taking untouched memory costs
        // nobody anything), later to floors.
        order.clear();
        order.extend(
            (0..obs.vms.len())
                .filter(|&i| obs.vms[i].balloon && !obs.vms[i].migrating && !stalled[i]),
        );
        // The bottom of a pass, before the step bound: the floor, or a layer of the working
        // set for the passes that take touched memory before it (a blind step may).
        let bottom = |i: usize, take: Take| match take {
            Take::UntouchedOrStep | Take::AboveHot => working_set[i].hot,
            Take::AboveAnon => working_set[i].anon,
            Take::Untouched | Take::Touched => obs.vms[i].floor(),
        };
        let lowest_in = |i: usize, take: Take| {
            let vm = &obs.vms[i];
            let mut lo = bottom(i, take);
            if let Some(step) = self.guards.max_inflate_step {
                lo = lo.max(vm.inflate_floor(step, current[i]));
            }
            if matches!(take, Take::Untouched | Take::UntouchedOrStep)
                && let Some(rss) = vm.rss
            {
                lo = lo.max((rss - vm.overhead).min(vm.actual));
            }
            lo.min(vm.configured)
        };
        let any_blocks = obs.vms.iter().any(|vm| vm.grid().is_some());
        // Whether a virtio-mem device may give a whole block where the excess left is less:
        // where that costs the guest nothing (untouched memory; free memory and cold cache,
        // when the policy knows the guest's hot layer), and deeper only when host swap
        // cannot hold the rest. Below its hot cache a block costs the guest refaults or an
        // OOM kill, and a sub-block excess matters only if every guest touches all it holds
        // — which host swap absorbs. (Seed 1000's 100 generated scenarios, every guest with
        // a balloon and 1 GiB blocks, guest OOM kills and stall-s: never over-taking 5,601
        // and 197,417; over-taking in every pass 9,102 and 117,319; this 6,269 and 167,470.
        // With 128 MiB blocks: 4, 1 and 0 kills; 669, 838 and 312 stall-s.)
        let over_take = |i: usize, take: Take, excess: Bytes| match take {
            Take::Untouched => true,
            Take::UntouchedOrStep => obs.vms[i].rss.is_some(),
            // Without the policy's estimate the hot layer is the floor.
            Take::AboveHot => self.policy.working_set(i).is_some() || swap_spare.get() < excess,
            Take::AboveAnon | Take::Touched => swap_spare.get() < excess,
        };
        // The priority hold (below) lasts as long as waiting may: RESERVE_WAIT_LIMIT.
        let hold_by_priority = may_wait;
        // Shrinks guests as far as `take` allows, lowest priority first, most room first.
        let shrink = |excess: &mut Bytes,
                      pending: &mut [Option<Pending>],
                      order: &mut Vec<usize>,
                      take: Take,
                      others_have_more: bool| {
            let lowest = |i: usize| lowest_in(i, take);
            // Two sweeps: the first takes what each guest can give up to the excess, a
            // virtio-mem device's at the block step above (less than a block: nothing); if
            // that leaves an excess, the second lets a device give the whole block below,
            // more than the rest (`over_take`) — the smallest blocks first within a
            // priority, so a 2 MiB remainder does not unplug a gigabyte.
            for whole_blocks in [false, true] {
                if *excess == Bytes::ZERO || (whole_blocks && !any_blocks) {
                    break;
                }
                let block = |i: usize| {
                    obs.vms[i]
                        .grid()
                        .filter(|_| whole_blocks)
                        .map_or(Bytes::ZERO, |b| b.step)
                };
                order.sort_by(|&a, &b| {
                    let room = |i: usize| final_of(i, pending) - lowest(i);
                    obs.vms[a]
                        .priority
                        .total_cmp(&obs.vms[b].priority)
                        .then(block(a).cmp(&block(b)))
                        .then(room(b).cmp(&room(a)))
                        .then(a.cmp(&b))
                });
                // Whether a guest of lower priority than the one at hand can give more in the
                // next ticks (its balloon follows, and it stays above its floor after this
                // tick's shrink).
                let mut lower_has_more = false;
                let mut tier_has_more = false;
                let mut tier = None;
                for &i in order.iter() {
                    if *excess == Bytes::ZERO {
                        break;
                    }
                    let vm = &obs.vms[i];
                    if tier.is_none_or(|p: f64| vm.priority.total_cmp(&p).is_gt()) {
                        lower_has_more |= tier_has_more;
                        tier_has_more = false;
                        tier = Some(vm.priority);
                    }
                    let t = final_of(i, pending);
                    // Before the growth cut, only memory known to be untouched is taken — not a
                    // raise (growth: the cut decides on it), not a VM whose RSS is unknown.
                    let skip_raise =
                        take == Take::Untouched && (t > current[i] || vm.rss.is_none());
                    // Memory that may be touched (all of it below RSS; a step of a guest whose RSS
                    // is unknown) is taken from a guest only once every guest of lower priority
                    // is at its floor — not merely at the most the step bound lets it give this
                    // tick: the excess closes at their pace over the next ticks, not out of a
                    // more important guest's working set (a generated scenario: a priority-3
                    // guest of 1 GiB squeezed to its floor at start-up, next to 12 GiB guests of
                    // priority 2 giving 512 MiB a tick: 6 OOM kills). Like the wait, for
                    // RESERVE_WAIT_LIMIT at most: a balloon that creeps cannot hold it forever.
                    let may_touch =
                        matches!(take, Take::Touched | Take::AboveHot | Take::AboveAnon)
                            || (take == Take::UntouchedOrStep && vm.rss.is_none());
                    let held =
                        may_touch && hold_by_priority && (lower_has_more || others_have_more);
                    let lo = lowest(i);
                    if !skip_raise && !held && t > lo {
                        let taken = (t - lo).min(*excess);
                        // A VM whose actual is above its configured size (misreport) is clamped
                        // (the clamp is not counted as taken); virtio-mem devices give whole
                        // block steps, so the step above counts — or, in the second sweep, the
                        // step below if it stays at or above the lowest.
                        let want = (t - taken).min(vm.configured);
                        let below = vm.on_blocks_below(want);
                        let new = if whole_blocks && below >= lo && over_take(i, take, *excess) {
                            below
                        } else {
                            vm.on_blocks(want)
                        };
                        if new < t {
                            *excess = *excess - (t - new).min(taken);
                            pending[i] = Some(Pending {
                                target: new,
                                rule: Rule::GuardReserve,
                                why: Why::Shrunk { from: t, to: new },
                            });
                        }
                    }
                    tier_has_more |= balloon_follows(vm, current[i], self.guards.max_inflate_step)
                        && final_of(i, pending) > bottom(i, take);
                }
            }
        };

        // A pass that may take a guest below its hot layer runs until what it takes leaves no
        // rounding behind uncounted (such a guest loses its block rounding, `grid_rounding`,
        // and what that covered is excess again; each round takes some guest lower, or
        // nothing), so the next step starts only from what this one could not give.
        let settle = |excess: &mut Bytes,
                      pending: &mut [Option<Pending>],
                      order: &mut Vec<usize>,
                      take: Take,
                      others_have_more: bool| {
            for _ in 0..=obs.vms.len() {
                let before = committed(pending);
                shrink(excess, pending, order, take, others_have_more);
                *excess = recount(pending);
                if *excess == Bytes::ZERO || committed(pending) == before {
                    break;
                }
            }
        };

        // 1. Untouched memory, before anyone's growth: a guest asking for memory gets it
        //    rather than leave idle pages with another.
        settle(&mut excess, pending, order, Take::Untouched, false);
        if excess == Bytes::ZERO {
            return ReserveOutcome::Fits;
        }
        // 2. What is left may wait for the untouched memory the step bound holds back.
        if may_wait
            && Self::can_wait(
                obs,
                current,
                pending,
                order,
                excess,
                self.guards.reserve.unwrap_or(Bytes::ZERO),
                self.guards.max_inflate_step,
            )
        {
            return ReserveOutcome::Waited;
        }

        // 3. Growth: cut every growth proportionally — but never below the floor (a raise
        //    *to* the floor is not growth the reserve may take back).
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
                // Round the cut up so the sum of cuts covers the excess; growth the rounding
                // leaves (below ROUNDING_NOISE) is cut too — the hysteresis already ran, and
                // a few bytes would be sent on their own.
                let cut = Bytes(((g.as_f64() * cut_fraction).ceil() as u64).min(g.0));
                let left = g - cut;
                let cut = if left < self.guards.rounding() {
                    g
                } else {
                    cut
                };
                let new = p.target - cut;
                if let Why::Policy { growth_cut, .. } = &mut p.why {
                    *growth_cut = Some((p.target, new));
                }
                p.rule = Rule::GuardReserve;
                p.target = new;
            }
            excess = recount(pending);
        }

        // 4. A step of every guest whose RSS is unknown (and the untouched memory of those
        //    whose growth was cut), then memory guests have touched, down to their floors.
        //    Layer by layer, each strictly by priority: every guest's free memory and cold
        //    cache before anyone's hot cache, and that before anyone's anonymous memory — a
        //    low-priority guest's processes are worth more than a high-priority guest's
        //    cache (a generated scenario: three priority-3 guests booting filled a host,
        //    and sixteen priority-0.5 guests squeezed to their floors OOM-killed 18 times).
        //    A layer waits, like a guest of higher priority, while some guest whose balloon
        //    follows still holds memory above the layer before (that the step bound keeps
        //    back this tick): the next ticks take that first.
        let left_above =
            |pending: &[Option<Pending>], order: &[usize], layer: fn(&WorkingSet) -> Bytes| {
                order.iter().any(|&i| {
                    balloon_follows(&obs.vms[i], current[i], self.guards.max_inflate_step)
                        && final_of(i, pending) > layer(&working_set[i])
                })
            };
        settle(&mut excess, pending, order, Take::UntouchedOrStep, false);
        shrink(&mut excess, pending, order, Take::AboveHot, false);
        // When even the floors do not fit and host swap can hold the rest, hot memory stays
        // where it is: the guest knows what is cold — not what is hot.
        if hot_memory_stays(obs, floors, capacity, committed(pending) - capacity) {
            return ReserveOutcome::Squeezed;
        }
        let hot_left = left_above(pending, order, |ws| ws.hot);
        settle(&mut excess, pending, order, Take::AboveAnon, hot_left);
        let anon_left = left_above(pending, order, |ws| ws.anon);
        settle(&mut excess, pending, order, Take::Touched, anon_left);
        ReserveOutcome::Squeezed
    }
}

#[cfg(test)]
mod tests;
