//! Property tests for the guarded [`Controller`]: a scripted policy proposes arbitrary
//! targets for arbitrary observations, and every emitted action must respect the guards.
//! Then the real policies under constant input must settle (a fixed point), and decisions
//! must survive a JSON round trip.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;
use crate::decision::{Action, ActionKind, Alert, Decision, Rule};
use crate::observation::{Blocks, GuestStats, HostSample, Observation, VmClass, VmSample};
use crate::policy::{PolicyKind, PolicySettings, Proposal, Reason, WorkingSet, aerostat};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The guard profile of the `aerostat` policy (reserve set by the test).
fn aerostat_guards(reserve: Bytes) -> GuardConfig {
    GuardConfig {
        reserve: Some(reserve),
        max_inflate_step: Some(Bytes::mib(512)),
        max_deflate_step: Some(Bytes::gib(4)),
        min_change: Bytes::mib(16),
        inflate_hold: Millis::secs(30),
        stall_block: Millis::ZERO,
    }
}

/// A policy that proposes whatever the test put in its script for this tick, and reports
/// fixed working-set estimates (by VM index).
#[derive(Debug, Clone, Default)]
struct Scripted {
    next: Arc<Mutex<Vec<(usize, Bytes)>>>,
    working_sets: Vec<Option<WorkingSet>>,
    unmet: Option<Bytes>,
}

impl Policy for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn guards(&self) -> GuardConfig {
        GuardConfig::passthrough()
    }
    fn propose_into(&mut self, _obs: &Observation, _targets: &[Bytes], out: &mut Vec<Proposal>) {
        let next = std::mem::take(&mut *self.next.lock().expect("script lock"));
        out.extend(next.into_iter().map(|(vm, target)| Proposal {
            vm,
            target,
            rule: Rule::Reclaim,
            reason: Reason::Text("scripted".into()),
        }));
    }
    fn working_set(&self, vm: usize) -> Option<WorkingSet> {
        self.working_sets.get(vm).copied().flatten()
    }
    fn unmet_need(&self) -> Option<Bytes> {
        self.unmet
    }
}

/// A VM's fixed configuration.
#[derive(Clone, Debug)]
struct VmSpec {
    configured: u64,
    min: Option<u64>,
    pinned: u64,
    overhead: u64,
    priority: f64,
    balloon: bool,
    migrating: bool,
    actual: u64,
    /// Host-measured RSS of the VM's process, when known.
    rss: Option<u64>,
    /// The policy's working-set estimate (anon, hot), when it has one.
    working_set: Option<(u64, u64)>,
    /// virtio-mem devices above this boot memory, resized in these steps, and whether a
    /// balloon trims the targets (`VmSample::blocks`).
    blocks: Option<(u64, u64, bool)>,
}

/// What happens to one VM in one tick.
#[derive(Clone, Debug)]
struct VmTick {
    /// 0: balloon followed the last target; 1: actual stays; 2: actual jumps to `raw`.
    actual_mode: u8,
    /// What the policy proposes: see `proposal_for`.
    proposal_kind: u8,
    raw: u64,
    /// Whether the migrating flag flips this tick.
    flip_migrating: bool,
}

#[derive(Clone, Debug)]
struct Case {
    vms: Vec<VmSpec>,
    total: u64,
    reserve: u64,
    /// The host's MemAvailable.
    available: u64,
    /// What KSM saves (`None`: unknown).
    ksm_saved: Option<u64>,
    /// What guests the controller does not drive hold (`HostSample::unmanaged`).
    unmanaged: u64,
    /// Host swap, all of it (the reserve guard leaves a sub-block excess to it).
    swap_total: u64,
    ticks: Vec<(u64, Vec<VmTick>)>,
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        1 => Just(1u64),
        2 => (0u64..=64).prop_map(|g| g * GIB),
        6 => 0u64..=(64 * GIB),
    ]
}

fn vm_spec() -> impl Strategy<Value = VmSpec> {
    (
        size(),
        prop::option::of(0u64..=100),
        prop_oneof![3 => Just(0u64), 1 => 0u64..=100],
        0u64..=(256 * MIB),
        prop_oneof![Just(1.0f64), 0.0f64..10.0],
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.1),
        0u64..=110,
        prop::option::of(0u64..=110),
        prop::option::of((0u64..=110, 0u64..=60)),
        prop::option::weighted(
            0.25,
            (
                0u64..=100,
                prop_oneof![Just(2 * MIB), Just(128 * MIB), Just(GIB)],
                prop::bool::weighted(0.5),
            ),
        ),
    )
        .prop_map(
            |(
                configured,
                min_pct,
                pinned_pct,
                overhead,
                priority,
                balloon,
                migrating,
                act_pct,
                rss_pct,
                ws_pct,
                blocks,
            )| {
                // Percentages of configured, up to above it: floors above configured and
                // actuals above configured are legal inputs.
                let pct = |p: u64| (configured as u128 * p as u128 / 100) as u64;
                VmSpec {
                    configured,
                    min: min_pct.map(|p| pct(p + p / 5)),
                    pinned: pct(pinned_pct),
                    overhead,
                    priority,
                    balloon,
                    migrating,
                    actual: pct(act_pct),
                    // RSS counts the overhead too; below it (a process that has not
                    // started its guest yet) exercises the saturating subtraction.
                    rss: rss_pct.map(|p| if p < 5 { pct(p) } else { pct(p) + overhead }),
                    working_set: ws_pct.map(|(anon, cache)| (pct(anon), pct(anon + cache))),
                    blocks: blocks.map(|(boot_pct, step, trims)| (pct(boot_pct), step, trims)),
                }
            },
        )
}

fn vm_tick() -> impl Strategy<Value = VmTick> {
    (0u8..3, 0u8..8, any::<u64>(), prop::bool::weighted(0.05)).prop_map(
        |(actual_mode, proposal_kind, raw, flip_migrating)| VmTick {
            actual_mode,
            proposal_kind,
            raw,
            flip_migrating,
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    prop::collection::vec(vm_spec(), 1..=12)
        .prop_flat_map(|vms| {
            let n = vms.len();
            let sum: u64 = vms.iter().map(|v| v.configured + v.overhead).sum();
            (
                Just(vms),
                // Host from far too small to roomy.
                (0u64..=150).prop_map(move |pct| (sum as u128 * pct as u128 / 100) as u64),
                prop_oneof![Just(0u64), 0u64..=(8 * GIB), Just(GIB), Just(u64::MAX / 4)],
                prop_oneof![Just(0u64), 0u64..=(64 * GIB)],
                prop_oneof![Just(None), (0u64..=(16 * GIB)).prop_map(Some)],
                prop_oneof![2 => Just(0u64), 1 => 0u64..=(4 * GIB), 1 => Just(u64::MAX / 4)],
                prop_oneof![3 => Just(0u64), 1 => 0u64..=(8 * GIB)],
                prop::collection::vec(
                    (0u64..=40_000, prop::collection::vec(vm_tick(), n..=n)),
                    1..=6,
                ),
            )
        })
        .prop_map(
            |(vms, total, reserve, available, ksm_saved, swap_total, unmanaged, ticks)| Case {
                vms,
                total,
                reserve,
                available,
                ksm_saved,
                unmanaged,
                swap_total,
                ticks,
            },
        )
}

fn sample(i: usize, s: &VmSpec) -> VmSample {
    let mut vm = VmSample::new(format!("vm-{i:02}"), Bytes(s.configured), Bytes(s.actual));
    vm.min = s.min.map(Bytes);
    vm.pinned = Bytes(s.pinned);
    vm.overhead = Bytes(s.overhead);
    vm.priority = s.priority;
    vm.balloon = s.balloon;
    vm.migrating = s.migrating;
    vm.rss = s.rss.map(Bytes);
    vm.blocks = s.blocks.map(|(boot, step, balloon_trims)| Blocks {
        boot: Bytes(boot),
        step: Bytes(step),
        balloon_trims,
    });
    vm
}

/// How far below `actual` the step bound lets a VM go in a tick: a step — and with
/// virtio-mem blocks above boot memory at least a block step (a step where a balloon trims
/// the targets), twice (a device reports blocks gone a tick late, so it steps from its last
/// target).
fn inflate_reach(vm: &VmSample, step: Bytes) -> Bytes {
    match vm.blocks {
        Some(b) if vm.actual > b.boot && b.balloon_trims => Bytes(2 * step.0),
        Some(b) if vm.actual > b.boot => Bytes(2 * step.max(b.step).0),
        _ => step,
    }
}

/// An arbitrary proposal: 0, huge, the floor, just around `actual`, anything up to twice
/// the configured size — or none.
fn proposal_for(vm: &VmSample, t: &VmTick) -> Option<Bytes> {
    let c = vm.configured.0;
    Some(Bytes(match t.proposal_kind {
        0 => 0,
        1 => u64::MAX,
        2 => vm.floor().0,
        3 => vm.actual.0.saturating_sub(t.raw % (64 * MIB)),
        4 => vm.actual.0.saturating_add(t.raw % (64 * MIB)),
        5 | 6 => t.raw % (c.saturating_mul(2).saturating_add(1)),
        _ => return None,
    }))
}

/// The lowest target the reserve guard may push a VM to this tick, or above it (with
/// virtio-mem blocks the guard's own bound can be lower: `VmSample::inflate_floor`); the
/// checks that use it put it on the VM's block grid.
fn lowest_allowed(vm: &VmSample, g: &GuardConfig) -> Bytes {
    let mut lo = vm.floor();
    if let Some(step) = g.max_inflate_step {
        lo = lo.max(vm.actual - step);
    }
    lo
}

/// Runs one case under `guards`, checking every guard on every tick.
fn check_case(case: &Case, guards: GuardConfig) -> Result<(), TestCaseError> {
    let script = Scripted {
        working_sets: case
            .vms
            .iter()
            .map(|s| {
                s.working_set.map(|(anon, hot)| WorkingSet {
                    anon: Bytes(anon),
                    hot: Bytes(hot),
                })
            })
            .collect(),
        ..Scripted::default()
    };
    let next = script.next.clone();
    let mut ctl = Controller::with_guards(Box::new(script), guards.clone());
    let mut vms: Vec<VmSample> = case
        .vms
        .iter()
        .enumerate()
        .map(|(i, s)| sample(i, s))
        .collect();
    // The model of the controller's memory: the last target sent (adoption: actual).
    let mut prev: Vec<Option<Bytes>> = vec![None; vms.len()];
    // ... and, for a guest the policy has no estimate of, the most it has touched beyond its
    // swap on any tick so far (its layers for the reserve guard).
    let mut blind_hold: Vec<Option<Bytes>> = vec![None; vms.len()];
    let mut time = Millis::ZERO;
    for (k, (dt, ticks)) in case.ticks.iter().enumerate() {
        time = time + Millis(*dt);
        for (i, (vm, t)) in vms.iter_mut().zip(ticks).enumerate() {
            match t.actual_mode {
                0 => {
                    if let Some(p) = prev[i] {
                        vm.actual = p;
                    }
                }
                1 => {}
                _ => vm.actual = Bytes(t.raw % vm.configured.0.saturating_add(GIB)),
            }
            if t.flip_migrating {
                vm.migrating = !vm.migrating;
            }
        }
        let proposals: Vec<(usize, Bytes)> = vms
            .iter()
            .zip(ticks)
            .enumerate()
            .filter_map(|(i, (vm, t))| proposal_for(vm, t).map(|p| (i, p)))
            .collect();
        *next.lock().expect("script lock") = proposals.clone();
        let obs = Observation {
            time,
            host: HostSample {
                total: Bytes(case.total),
                free: Bytes(case.total / 2),
                available: Bytes(case.available),
                ksm_saved: case.ksm_saved.map(Bytes),
                unmanaged: Bytes(case.unmanaged),
                swap_total: Bytes(case.swap_total),
                ..HostSample::default()
            },
            vms: vms.clone(),
        };
        let before: Vec<Bytes> = vms
            .iter()
            .enumerate()
            .map(|(i, vm)| prev[i].unwrap_or(vm.actual))
            .collect();
        for (i, vm) in vms.iter().enumerate() {
            let touched = vm.rss.filter(|_| !vm.migrating).map(|rss| {
                let t = rss.0.saturating_sub(vm.overhead.0).min(vm.configured.0);
                Bytes(t.saturating_sub(vm.guest_swap.map_or(0, |s| s.0)))
            });
            if case.vms[i].working_set.is_none() {
                blind_hold[i] = blind_hold[i].max(touched);
            }
        }
        let d = ctl.tick(&obs);
        let ctx = || format!("tick {k}, proposals {proposals:?}");

        let mut seen = vec![false; vms.len()];
        for a in &d.actions {
            let i = vms
                .iter()
                .position(|v| v.name == a.vm)
                .ok_or_else(|| TestCaseError::fail(format!("action for unknown VM {a:?}")))?;
            prop_assert!(!seen[i], "two actions for {} ({})", a.vm, ctx());
            seen[i] = true;
            let vm = &vms[i];
            let ActionKind::Balloon { from, to } = a.kind;
            prop_assert!(
                vm.balloon && !vm.migrating,
                "action for a VM without balloon or migrating: {a:?} ({})",
                ctx()
            );
            prop_assert_eq!(from, before[i], "`from` is not the last target ({})", ctx());
            prop_assert_ne!(from, to, "no-op action {:?}", a);
            let floor = vm.floor();
            prop_assert!(
                to >= floor,
                "{} target {} below floor {} (rule {:?}, {}; vm {:?})",
                a.vm,
                to.0,
                floor.0,
                a.rule,
                ctx(),
                vm
            );
            prop_assert!(
                to <= vm.configured,
                "{} target {} above configured {} ({})",
                a.vm,
                to.0,
                vm.configured.0,
                ctx()
            );
            if to != floor {
                if let Some(step) = guards.max_inflate_step {
                    // The configured maximum wins over the step (an `actual` above it).
                    let mut lo = vm.actual - inflate_reach(vm, step);
                    // Below boot memory only the balloon moves: the plain step, however
                    // large the blocks above it.
                    if let Some(b) = vm.blocks.filter(|b| vm.actual > b.boot) {
                        lo = lo.max(b.boot - step);
                    }
                    let lo = lo.min(before[i]).min(vm.configured);
                    prop_assert!(
                        to >= lo,
                        "{} target {} below min(actual − step, previous, configured) = {} ({})",
                        a.vm,
                        to.0,
                        lo.0,
                        ctx()
                    );
                }
                if let Some(step) = guards.max_deflate_step {
                    // Rounded up to the block grid, as the devices carry targets out.
                    let hi = vm
                        .on_blocks((vm.actual + step).max(before[i]))
                        .max(before[i]);
                    prop_assert!(
                        to <= hi,
                        "{} target {} above max(actual + step, previous) = {} ({})",
                        a.vm,
                        to.0,
                        hi.0,
                        ctx()
                    );
                }
            }
            if guards == GuardConfig::passthrough() {
                let p = proposals.iter().find(|p| p.0 == i).map(|p| p.1);
                prop_assert_eq!(
                    Some(to),
                    p.map(|p| vm.on_blocks(p).max(floor).min(vm.configured)),
                    "passthrough must send the clamped proposal"
                );
            }
            prev[i] = Some(to);
        }
        // Adopted VMs start at their actual.
        for (i, vm) in vms.iter().enumerate() {
            if prev[i].is_none() {
                prev[i] = Some(vm.actual);
            }
            prop_assert_eq!(ctl.target_of(&vm.name), prev[i]);
        }
        if guards == GuardConfig::passthrough() {
            // Every clamped proposal that differs from the last target is sent.
            for &(i, p) in &proposals {
                let vm = &vms[i];
                let want = vm.on_blocks(p).max(vm.floor()).min(vm.configured);
                if vm.balloon && !vm.migrating && want != before[i] {
                    prop_assert!(seen[i], "passthrough dropped {}'s {:?}", vm.name, want);
                }
            }
        }

        // Guard 3: the reserve is kept whenever the floors fit, or every VM that may be
        // squeezed is at the lowest target allowed this tick (or held there by priority).
        if let Some(reserve) = guards.reserve {
            // What KSM saves is capacity: the merged pages are held once.
            // Memory a balloon claims to have given back while the host still holds it is
            // used: each such alert names exactly the VM's `rss − overhead − actual`, more
            // than 256 MiB.
            let mut kept = Bytes::ZERO;
            for a in &d.alerts {
                if let Alert::BalloonKeepsMemory { vm: name, kept: k } = a {
                    let vm = vms.iter().find(|v| v.name == *name).expect("a known VM");
                    let rss = vm.rss.expect("kept memory is measured");
                    prop_assert_eq!(*k, rss - vm.overhead - vm.actual);
                    prop_assert!(*k > Bytes::mib(256));
                    kept += *k;
                }
            }
            let capacity = Bytes(case.total) - reserve + Bytes(case.ksm_saved.unwrap_or(0))
                - Bytes(case.unmanaged)
                - kept;
            let floors: Bytes = vms
                .iter()
                .map(|vm| vm.overhead + if vm.balloon { vm.floor() } else { vm.actual })
                .sum();
            let committed: Bytes = vms
                .iter()
                .enumerate()
                .map(|(i, vm)| {
                    vm.overhead
                        + if vm.balloon {
                            prev[i].unwrap_or(vm.actual)
                        } else {
                            vm.actual
                        }
                })
                .sum();
            // A guest's working set, the policy's estimate in two layers: floor ≤ anon ≤ hot;
            // without one, both at the most it has touched beyond its swap.
            let anon_level = |i: usize| {
                let floor = vms[i].floor();
                case.vms[i].working_set.map_or_else(
                    || blind_hold[i].unwrap_or(floor).max(floor),
                    |(anon, _)| Bytes(anon).max(floor),
                )
            };
            let hot_level = |i: usize| {
                let hot = case.vms[i]
                    .working_set
                    .map_or(Bytes::ZERO, |(_, hot)| Bytes(hot));
                hot.max(anon_level(i))
            };
            // Whether a guest whose balloon follows, of priority below `than` (any, with
            // `f64::INFINITY`), holds memory above `level` of its own after this tick.
            let some_above = |than: f64, level: &dyn Fn(usize) -> Bytes| {
                vms.iter().enumerate().any(|(j, w)| {
                    w.balloon
                        && !w.migrating
                        && balloon_follows(w, before[j], guards.max_inflate_step)
                        && w.priority < than
                        && prev[j].unwrap_or(w.actual) > level(j)
                })
            };
            // A guest is held above its lowest by priority while a guest of lower priority
            // whose balloon follows stays above its floor: that one gives the rest in the
            // next ticks.
            let floor_of = |j: usize| vms[j].floor();
            let lower_has_more = |vm: &VmSample| some_above(vm.priority, &floor_of);
            // A layer of a guest's working set is held while any guest whose balloon follows
            // still holds memory above the layer before: the next ticks take that first.
            let above_hot_left = some_above(f64::INFINITY, &hot_level);
            let above_anon_left = some_above(f64::INFINITY, &anon_level);
            // What block grids round up above hot layers is not counted, as far as host swap
            // can hold it (`grid_rounding`): the guard's excess is what is left.
            let excess = committed - capacity;
            let rounding: Bytes = vms
                .iter()
                .enumerate()
                .filter(|(i, vm)| {
                    vm.balloon
                        && !vm.migrating
                        && vm.grid().is_some()
                        && case.vms[*i].working_set.is_some()
                })
                .map(|(i, vm)| {
                    let hot = hot_level(i);
                    prev[i].unwrap_or(vm.actual).min(vm.on_blocks(hot)) - hot
                })
                .sum();
            let rounding = rounding.min(Bytes(case.swap_total));
            let left = excess - rounding;
            let swap_spare = Bytes(case.swap_total) - rounding;
            let rounding_left = left == Bytes::ZERO;
            // A virtio-mem guest may keep a block above its lowest where the excess left is
            // less than a block and the host swap the rounding leaves can hold it: the guard
            // takes a whole block more than the excess from a guest's hot cache or working
            // set only when host swap cannot. (It always does from untouched memory, free
            // memory and cold cache; this check does not tell those apart — the excess a pass
            // saw can exceed the one left — and the regression test below pins that case.)
            let sub_block_left =
                |vm: &VmSample| vm.grid().is_some_and(|b| left < b.step) && swap_spare >= left;
            let all_lowest = rounding_left
                || vms.iter().enumerate().all(|(i, vm)| {
                    let t = prev[i].unwrap_or(vm.actual);
                    let lowest = lowest_allowed(vm, &guards);
                    // virtio-mem devices give whole block steps: a VM with blocks is at its
                    // lowest at the block step at or above it (`on_blocks`; the identity for a
                    // VM without blocks).
                    let at_most = |level: Bytes| t <= vm.on_blocks(level.min(vm.configured));
                    !vm.balloon
                        || vm.migrating
                        || at_most(lowest)
                        || sub_block_left(vm)
                        || lower_has_more(vm)
                        || (above_anon_left && at_most(lowest.max(anon_level(i))))
                        || (above_hot_left && at_most(lowest.max(hot_level(i))))
                });
            let alerted = d
                .alerts
                .iter()
                .any(|a| matches!(a, Alert::FloorsDoNotFit { .. }));
            prop_assert_eq!(
                alerted,
                floors > capacity,
                "FloorsDoNotFit alert iff floors > capacity"
            );
            // The one exception: the guard may leave the excess to the next ticks when
            // the host has room now (the excess, or its whole reserve, is available) and
            // the guests it may shrink hold that much untouched memory (RSS) that only the
            // step bound keeps it from taking.
            let untouched: Bytes = vms
                .iter()
                .enumerate()
                .filter(|(_, vm)| vm.balloon && !vm.migrating)
                // Only balloons that follow their targets count.
                .filter(|(i, vm)| balloon_follows(vm, before[*i], guards.max_inflate_step))
                .filter_map(|(i, vm)| {
                    let rss = vm.rss?;
                    // A raise is not untouched memory.
                    let t = prev[i].unwrap_or(vm.actual).min(before[i]);
                    Some(t - vm.floor().max(rss - vm.overhead))
                })
                .sum();
            // Growth let through while waiting must be available on top.
            let growth: Bytes = vms
                .iter()
                .enumerate()
                .map(|(i, vm)| prev[i].unwrap_or(vm.actual) - before[i].max(vm.floor()))
                .sum();
            let waiting = Bytes(case.available) >= growth + left.min(reserve) && untouched >= left;
            // When even the floors do not fit and host swap can hold the excess, the guard
            // stops at the guests' hot layers (`hot_memory_stays`) unless it waited.
            let hot_stays = floors > capacity && Bytes(case.swap_total) >= excess;
            if waiting && committed > capacity && !all_lowest {
                // Waiting is allowed only after the first pass took all memory known to be
                // untouched that the step bound lets it take this tick (growth is left as
                // asked).
                for (i, vm) in vms.iter().enumerate() {
                    if !vm.balloon || vm.migrating {
                        continue;
                    }
                    // Only memory known to be untouched is taken before waiting.
                    let Some(rss) = vm.rss else { continue };
                    let mut lo =
                        lowest_allowed(vm, &guards).max((rss - vm.overhead).min(vm.actual));
                    if hot_stays {
                        lo = lo.max(hot_level(i));
                    }
                    let t = prev[i].unwrap_or(vm.actual);
                    // A raise kept while waiting is growth, not untouched memory.
                    if t > before[i] {
                        continue;
                    }
                    prop_assert!(
                        t <= vm.on_blocks(lo.min(vm.configured)),
                        "waited with {} above its first-pass lowest {} ({})",
                        vm.name,
                        lo.0,
                        ctx()
                    );
                }
            }
            // Strict priority, checked on the first tick (a fresh controller, so its 30 s
            // limit cannot have run out): a guard shrink into memory that may be touched
            // (below RSS, or any shrink of a guest whose RSS is unknown) leaves no guest of
            // lower priority whose balloon follows above its hot working set; a shrink into
            // the guest's hot cache leaves none above its anon layer and no guest at all above
            // its hot layer; a shrink into its anon layer leaves none above its floor and no
            // guest at all above its anon layer.
            if k == 0 {
                for a in d.actions.iter().filter(|a| a.rule == Rule::GuardReserve) {
                    let Some(i) = vms.iter().position(|v| v.name == a.vm) else {
                        continue;
                    };
                    let vm = &vms[i];
                    let to = a.balloon_target().unwrap_or(vm.actual);
                    let untouched_lowest = vm.rss.map(|r| (r - vm.overhead).min(vm.actual));
                    // Not a squeeze: no shrink, a shrink of untouched memory, or the clamp of an
                    // `actual` reported above the configured size.
                    if to >= before[i]
                        || to >= vm.configured
                        || untouched_lowest.is_some_and(|lo| to >= lo)
                    {
                        continue;
                    }
                    let others_have_more = if to < anon_level(i) {
                        lower_has_more(vm) || above_anon_left
                    } else if to < hot_level(i) {
                        some_above(vm.priority, &anon_level) || above_hot_left
                    } else {
                        some_above(vm.priority, &hot_level)
                    };
                    prop_assert!(
                        !others_have_more,
                        "{} (priority {}) squeezed to {} while a lower-priority guest can give more; \
                         {}; actions {:?}; vms {:?}",
                        vm.name,
                        vm.priority,
                        to.0,
                        ctx(),
                        d.actions,
                        vms.iter()
                            .enumerate()
                            .map(|(j, w)| (
                                &w.name,
                                w.priority,
                                w.balloon,
                                w.migrating,
                                w.actual.0,
                                before[j].0,
                                prev[j].map(|b| b.0),
                                w.floor().0,
                                w.rss.map(|b| b.0)
                            ))
                            .collect::<Vec<_>>()
                    );
                }
            }
            if floors <= capacity {
                prop_assert!(
                    committed <= capacity || all_lowest || waiting,
                    "reserve broken: committed {} > capacity {} (floors {}) and some VM is \
                     above its lowest allowed target; {}; actions {:?}",
                    committed.0,
                    capacity.0,
                    floors.0,
                    ctx(),
                    d.actions
                );
            }
        }
    }
    Ok(())
}

// 10,000 cases a run (0.6 s in release): the reserve guard's sub-block gap with virtio-mem
// blocks (session 27) failed 17 of 20 runs of 2,000 cases; more cases, fewer such misses.
proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn guards_hold_under_aerostat_profile(case in case()) {
        let reserve = Bytes(case.reserve);
        check_case(&case, aerostat_guards(reserve))?;
    }

    #[test]
    fn guards_hold_under_passthrough(case in case()) {
        check_case(&case, GuardConfig::passthrough())?;
    }
}

// ---------------------------------------------------------------------------------------
// Found by the properties above, kept as plain regression cases.

fn one_tick(
    guards: GuardConfig,
    total: Bytes,
    vms: Vec<VmSample>,
    proposals: Vec<(usize, Bytes)>,
) -> Decision {
    let script = Scripted::default();
    *script.next.lock().expect("script lock") = proposals;
    let mut ctl = Controller::with_guards(Box::new(script), guards);
    ctl.tick(&Observation {
        time: Millis::secs(100),
        host: HostSample {
            total,
            ..HostSample::default()
        },
        vms,
    })
}

/// The policy's unmet need becomes an alert an operator sees (`aerostat status`, the log)
/// from 64 MiB on, with or without the escape: the floors fit, the working sets do not.
#[test]
fn unmet_need_is_an_alert_that_working_sets_do_not_fit() {
    let alerts = |unmet: Option<Bytes>| {
        let script = Scripted {
            unmet,
            ..Scripted::default()
        };
        let mut ctl = Controller::with_guards(Box::new(script), aerostat_guards(Bytes::gib(1)));
        let d = ctl.tick(&Observation {
            time: Millis::secs(100),
            host: HostSample {
                total: Bytes::gib(16),
                ..HostSample::default()
            },
            vms: vec![VmSample::new("a", Bytes::gib(8), Bytes::gib(8))],
        });
        d.alerts
    };
    assert_eq!(
        alerts(Some(Bytes::mib(100))),
        vec![Alert::WorkingSetsDoNotFit {
            unmet: Bytes::mib(100)
        }]
    );
    assert!(
        alerts(Some(Bytes::mib(100)))[0]
            .to_string()
            .contains("working sets do not fit")
    );
    assert_eq!(alerts(Some(Bytes::mib(63))), vec![]);
    assert_eq!(alerts(None), vec![]);
}

/// What guests the controller does not drive hold (`HostSample::unmanaged`, in RAM) is
/// counted at once, beyond what host swap can take: all of it without swap free, the rest
/// past swap free, none when swap holds it all. With a balloon that keeps memory beyond its
/// claim, the two share the one swap allowance. The guard then shrinks the driven guest to
/// make the room, and says who holds it.
#[test]
fn an_undriven_guests_memory_is_counted_beyond_host_swap_free() {
    let kept_and_target = |unmanaged: u64, swap_free: u64, liar: bool| {
        let mut ctl = Controller::with_guards(
            Box::new(Scripted::default()),
            aerostat_guards(Bytes::gib(1)),
        );
        let mut actions = Vec::new();
        // Two ticks a minute apart: a balloon's kept memory counts once it has lasted.
        for t in [0, 61] {
            let mut vm = VmSample::new("a", Bytes::gib(8), Bytes::gib(6));
            vm.overhead = Bytes::mib(128);
            vm.rss = Some(vm.overhead + if liar { Bytes::gib(8) } else { Bytes::gib(6) });
            let d = ctl.tick(&Observation {
                time: Millis::secs(100 + t),
                host: HostSample {
                    total: Bytes::gib(12),
                    swap_total: Bytes::gib(16),
                    swap_free: Bytes::gib(swap_free),
                    unmanaged: Bytes::gib(unmanaged),
                    ..HostSample::default()
                },
                vms: vec![vm],
            });
            actions.extend(d.actions);
        }
        (ctl.kept_memory(), ctl.target_of("a"), actions)
    };
    assert_eq!(kept_and_target(5, 0, false).0, Bytes::gib(5));
    assert_eq!(kept_and_target(5, 2, false).0, Bytes::gib(3));
    assert_eq!(kept_and_target(5, 8, false).0, Bytes::ZERO);
    // 2 GiB kept by the balloon + 5 GiB undriven − 4 GiB of swap free.
    assert_eq!(kept_and_target(5, 4, true).0, Bytes::gib(3));
    // 12 − 1 reserve − 5 counted leaves 6 GiB for the driven guest and its overhead.
    let (_, target, actions) = kept_and_target(5, 0, false);
    assert!(
        target.is_some_and(|t| t <= Bytes::gib(6) - Bytes::mib(128)),
        "{target:?} {actions:?}"
    );
    assert!(
        actions.iter().any(|a| a
            .reason
            .contains("by guests aerostat does not drive: 5.00 GiB")),
        "{actions:?}"
    );
}

/// A balloon that claims 2 GiB while its QEMU holds 8 GiB: after a minute the reserve guard
/// counts the 6 GiB as used (shrinking the other guest to keep the reserve) and says so.
/// An honest guest, within the margin of its overhead estimate, never is.
#[test]
fn a_balloon_that_keeps_memory_it_claims_to_have_returned_counts_as_used() {
    let mut ctl = Controller::with_guards(
        Box::new(Scripted::default()),
        aerostat_guards(Bytes::gib(1)),
    );
    let overhead = Bytes::mib(128);
    let observe = |t: u64, liar_rss: Bytes| {
        let mut liar = VmSample::new("liar", Bytes::gib(8), Bytes::gib(2));
        liar.overhead = overhead;
        liar.rss = Some(liar_rss + overhead);
        let mut honest = VmSample::new("honest", Bytes::gib(8), Bytes::gib(8));
        honest.overhead = overhead;
        // 200 MiB above its balloon: the overhead estimate was low. Within the margin.
        honest.rss = Some(Bytes::gib(8) + overhead + Bytes::mib(200));
        Observation {
            time: Millis::secs(t),
            host: HostSample {
                total: Bytes::gib(16),
                free: Bytes::gib(8),
                available: Bytes::gib(8),
                ..HostSample::default()
            },
            vms: vec![honest, liar],
        }
    };
    // 2 + 8 GiB + overheads fit 15 GiB: nothing to do, for the first minute too.
    for t in 0..60 {
        let d = ctl.tick(&observe(t, Bytes::gib(8)));
        assert!(d.actions.is_empty() && d.alerts.is_empty(), "t={t}: {d:?}");
    }
    let d = ctl.tick(&observe(60, Bytes::gib(8)));
    assert_eq!(
        d.alerts,
        vec![Alert::BalloonKeepsMemory {
            vm: "liar".into(),
            kept: Bytes::gib(6),
        }]
    );
    assert!(
        d.alerts[0]
            .to_string()
            .contains("liar's QEMU holds 6.00 GiB more")
    );
    // 8 + 2 + 6 kept + 0.25 GiB overheads: 1.25 GiB over; the guard shrinks, a step a tick.
    let shrunk: Vec<_> = d
        .actions
        .iter()
        .filter(|a| a.vm == "honest" && a.rule == Rule::GuardReserve)
        .collect();
    assert_eq!(shrunk.len(), 1, "{d:?}");
    assert!(shrunk[0].balloon_target() < Some(Bytes::gib(8)), "{d:?}");
    assert!(
        shrunk[0].reason.contains("6.00 GiB kept by balloons"),
        "{d:?}"
    );
    // Once the host measures the memory back, it no longer counts.
    let d = ctl.tick(&observe(61, Bytes::gib(2)));
    assert!(d.alerts.is_empty(), "{d:?}");

    // With 8 GiB of host swap free the same lie is reported, but host swap holds the kept
    // memory: no guest is squeezed for it.
    let mut ctl = Controller::with_guards(
        Box::new(Scripted::default()),
        aerostat_guards(Bytes::gib(1)),
    );
    for t in 0..=60 {
        let mut o = observe(t, Bytes::gib(8));
        o.host.swap_free = Bytes::gib(8);
        let d = ctl.tick(&o);
        assert!(d.actions.is_empty(), "t={t}: {d:?}");
        assert_eq!(d.alerts.len(), usize::from(t == 60), "t={t}: {d:?}");
    }
}

/// A VM whose balloon sits below its (raised) floor is lifted to the floor; when the host
/// is tight the reserve guard cuts that "growth" proportionally like any other and sends a
/// target *below the floor* — although other guests could give the memory instead.
#[test]
fn growth_cut_never_goes_below_floor() {
    // a: 2 GiB actual, floor 4 GiB → the floor guard raises it to 4 GiB (+2 GiB growth).
    let mut a = VmSample::new("a", Bytes::gib(8), Bytes::gib(2));
    a.min = Some(Bytes::gib(4));
    // b: 8 GiB, no floor: plenty to give.
    let b = VmSample::new("b", Bytes::gib(8), Bytes::gib(8));
    // Host: 12 GiB − 1 GiB reserve = 11 GiB; floors (4 GiB) fit; a at 4 + b at 8 = 12 GiB:
    // 1 GiB excess, half of a's 2 GiB "growth" is cut → a gets 3 GiB, below its floor.
    // (With 2 GiB excess the whole raise is cut and a silently stays at 2 GiB, below its
    // floor, with no action at all.)
    let d = one_tick(
        aerostat_guards(Bytes::gib(1)),
        Bytes::gib(12),
        vec![a, b],
        vec![(0, Bytes::gib(2))],
    );
    for act in &d.actions {
        if act.vm == "a" {
            let to = act.balloon_target().unwrap_or_default();
            assert!(
                to >= Bytes::gib(4),
                "a sent {} below its floor 4 GiB: {act:?}",
                to
            );
        }
    }
}

/// The reserve guard counts a policy's small (or held) shrink as done, then the hysteresis
/// guard drops it: the host ends above total − reserve although every VM could still give.
#[test]
fn hysteresis_does_not_undo_the_reserve() {
    // Two 8 GiB VMs at 8 GiB; capacity 16 GiB − 8 MiB. The policy asks a for −8 MiB (below
    // min_change): guard 3 sees Σ = capacity and does nothing; guard 4 drops the shrink.
    let a = VmSample::new("a", Bytes::gib(8), Bytes::gib(8));
    let b = VmSample::new("b", Bytes::gib(8), Bytes::gib(8));
    let guards = aerostat_guards(Bytes::ZERO);
    let total = Bytes(16 * GIB - 8 * MIB);
    let d = one_tick(
        guards,
        total,
        vec![a.clone(), b.clone()],
        vec![(0, Bytes(8 * GIB - 8 * MIB))],
    );
    let mut targets = [a.actual, b.actual];
    for act in &d.actions {
        let i = usize::from(act.vm == "b");
        targets[i] = act.balloon_target().unwrap_or_default();
    }
    let committed = targets[0] + targets[1];
    assert!(
        committed <= total,
        "Σ targets {} > capacity {} with room left: {:?}",
        committed.0,
        total.0,
        d.actions
    );
}

/// A guest 12 MiB below its configured size asks for all of it back: the dead band must not
/// keep it there (`unseen-6246`: sixteen 1 GiB guests thrashing at 1012 MiB for hours, with
/// the host's memory free). A small shrink is still churn.
#[test]
fn giving_a_guest_all_its_memory_is_never_churn() {
    let vm = VmSample::new("a", Bytes::gib(1), Bytes(GIB - 12 * MIB));
    let guards = aerostat_guards(Bytes::ZERO);
    let d = one_tick(
        guards.clone(),
        Bytes::gib(8),
        vec![vm.clone()],
        vec![(0, Bytes::gib(1))],
    );
    assert_eq!(
        d.actions.first().and_then(Action::balloon_target),
        Some(Bytes::gib(1)),
        "{:?}",
        d.actions
    );
    let d = one_tick(
        guards,
        Bytes::gib(8),
        vec![vm],
        vec![(0, Bytes(GIB - 24 * MIB))],
    );
    assert!(d.actions.is_empty(), "{:?}", d.actions);
}

/// A guest a byte above its floor, whose policy asks for less than the floor: lifting the
/// proposal to the floor makes a 1-byte shrink, which is churn, not safety. (The settle
/// property test: ten guests on a short host, one a byte above its floor, was sent to the
/// floor and a byte back every 31 s for ever.)
#[test]
fn lifting_a_proposal_to_a_floor_the_guest_is_above_is_not_safety() {
    let mut vm = VmSample::new("a", Bytes::gib(16), Bytes(768 * MIB + 1));
    vm.min = Some(Bytes::mib(768));
    let d = one_tick(
        aerostat_guards(Bytes::ZERO),
        Bytes::gib(32),
        vec![vm.clone()],
        vec![(0, Bytes::mib(700))],
    );
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    // Below its floor, the guest is lifted to it, however little is missing.
    vm.actual = Bytes(768 * MIB - 1);
    let d = one_tick(
        aerostat_guards(Bytes::ZERO),
        Bytes::gib(32),
        vec![vm],
        vec![(0, Bytes::mib(700))],
    );
    assert_eq!(
        d.actions.first().and_then(Action::balloon_target),
        Some(Bytes::mib(768)),
        "{:?}",
        d.actions
    );
}

/// The reserve guard cuts a guest's growth to what the host can hold; what is left below
/// `ROUNDING_NOISE` is cut too rather than sent on its own — the hysteresis has already
/// run. (The other half of the same 31 s cycle: the cut left that guest a byte above its
/// floor.) A few MiB left are memory and are sent.
#[test]
fn a_growth_cut_sends_no_rounding() {
    let a = VmSample::new("a", Bytes::gib(8), Bytes::gib(4));
    let b = VmSample::new("b", Bytes::gib(8), Bytes::gib(4));
    // a asks for 1 GiB more; the host has room for only 512 KiB of it.
    let total = Bytes::gib(8) + Bytes(512 * 1024);
    let d = one_tick(
        aerostat_guards(Bytes::ZERO),
        total,
        vec![a.clone(), b.clone()],
        vec![(0, Bytes::gib(5))],
    );
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    // With 12 MiB of room, a gets them.
    let d = one_tick(
        aerostat_guards(Bytes::ZERO),
        Bytes::gib(8) + Bytes::mib(12),
        vec![a, b],
        vec![(0, Bytes::gib(5))],
    );
    assert_eq!(
        d.actions.first().and_then(Action::balloon_target),
        Some(Bytes::gib(4) + Bytes::mib(12)),
        "{:?}",
        d.actions
    );
}

/// QEMU reports `actual` above the configured size (the operator lowered `configured`, or
/// the balloon misreports): the reserve guard shrinks only down to `actual − step`, and sends
/// that target although it is above the configured maximum the bounds guard enforced.
#[test]
fn reserve_shrink_never_goes_above_configured() {
    let vm = VmSample::new("a", Bytes::gib(4), Bytes::gib(6));
    let d = one_tick(
        aerostat_guards(Bytes::ZERO),
        Bytes::gib(2),
        vec![vm],
        vec![],
    );
    for act in &d.actions {
        let to = act.balloon_target().unwrap_or_default();
        assert!(
            to <= Bytes::gib(4),
            "target {to} above configured 4 GiB: {act:?}"
        );
    }
}

#[test]
fn balloonless_and_migrating_vms_are_never_touched() {
    let mut a = VmSample::new("a", Bytes::gib(8), Bytes::gib(8));
    a.balloon = false;
    let mut b = VmSample::new("b", Bytes::gib(8), Bytes::gib(8));
    b.migrating = true;
    let c = VmSample::new("c", Bytes::gib(8), Bytes::gib(8));
    // Host far too small: the reserve guard must squeeze c only.
    let d = one_tick(
        aerostat_guards(Bytes::gib(1)),
        Bytes::gib(8),
        vec![a, b, c],
        vec![(0, Bytes::gib(1)), (1, Bytes::gib(1)), (2, Bytes::gib(8))],
    );
    assert!(!d.actions.is_empty());
    assert!(d.actions.iter().all(|a| a.vm == "c"), "{:?}", d.actions);
}

// ---------------------------------------------------------------------------------------
// Fixed point: real policies under constant input settle and stay put.

/// A guest whose used memory and page cache do not change. `follow`: its stats are
/// consistent with the balloon (MemTotal = actual, available = actual − used); otherwise
/// free / available / disk_caches are the same numbers every tick.
#[derive(Clone, Debug)]
struct SteadyGuest {
    configured: u64,
    min: Option<u64>,
    used: u64,
    cache: u64,
    class: VmClass,
    priority: f64,
    scan_stats: bool,
}

fn steady_guest() -> impl Strategy<Value = SteadyGuest> {
    (
        (1u64..=16).prop_map(|g| g * GIB),
        prop::option::of(0u64..=50),
        0u64..=80,
        0u64..=40,
        prop::sample::select(VmClass::ALL.to_vec()),
        prop_oneof![Just(1.0f64), 0.1f64..5.0],
        any::<bool>(),
    )
        .prop_map(
            |(configured, min, used, cache, class, priority, scan_stats)| {
                let pct = |p: u64| configured / 100 * p;
                SteadyGuest {
                    configured,
                    min: min.map(pct),
                    used: pct(used),
                    cache: pct(cache).min(configured - pct(used)),
                    class,
                    priority,
                    scan_stats,
                }
            },
        )
}

fn steady_stats(g: &SteadyGuest, actual: Bytes, follow: bool) -> GuestStats {
    let counters = |on: bool| on.then_some(1000u64);
    let mut s = GuestStats {
        swap_in: Some(Bytes::ZERO),
        swap_out: Some(Bytes::ZERO),
        major_faults: Some(10),
        minor_faults: Some(1000),
        oom_kills: Some(0),
        async_scans: counters(g.scan_stats),
        direct_scans: counters(g.scan_stats),
        async_reclaims: counters(g.scan_stats),
        direct_reclaims: counters(g.scan_stats),
        ..GuestStats::default()
    };
    if follow {
        let total = actual.0;
        let used = g.used.min(total);
        let cache = g.cache.min(total - used);
        s.total = Some(Bytes(total));
        s.available = Some(Bytes(total - used));
        s.free = Some(Bytes(total - used - cache));
        s.disk_caches = Some(Bytes(cache));
    } else {
        s.available = Some(Bytes(g.configured - g.used));
        s.free = Some(Bytes(g.configured - g.used - g.cache));
        s.disk_caches = Some(Bytes(g.cache));
    }
    s
}

/// What the host reports while the guests settle.
#[derive(Clone, Copy, Debug)]
enum HostInput {
    /// The same free / available bytes every tick (the brief's "constant observation").
    Constant { free: u64 },
    /// Free = available = total − Σ (resident + overhead): the host sees the balloons move.
    /// As on a real host, a guest's memory is resident once touched (all of it at the
    /// start, the worst case) until its balloon takes it back; room a deflate gives costs
    /// the host nothing until the guest touches it — with its cache, when the cache had
    /// been capped by the balloon. (Counting every deflated byte as resident at once, a
    /// lone 1 GiB guest on a 718 MiB host cycled between two targets every 31 s: the room
    /// the host's share gave it took the share back. No host does that; the policy's
    /// ramps assume deflated room is untouched — see `available_share`.) Not modelled: a
    /// guest that fills all the room it is given with page cache at once (streaming I/O);
    /// its cache here is capped at its steady size.
    Follows,
}

/// What a controller did under constant input.
#[derive(Debug)]
struct Activity {
    /// The index of the last tick that sent anything.
    last: Option<usize>,
    /// The moves sent in the last QUIET ticks.
    late_moves: usize,
}

/// Ticks `kind` on a constant observation, the balloon following every target, for
/// `ticks` ticks; returns what it did.
fn activity(
    kind: PolicyKind,
    guests: &[SteadyGuest],
    host_total: u64,
    host: HostInput,
    reserve: u64,
    follow: bool,
    ticks: usize,
) -> Activity {
    let interval = kind.native_interval();
    let settings = PolicySettings {
        reserve: Bytes(reserve),
        interval,
        ..PolicySettings::default()
    };
    let mut ctl = Controller::new(kind.build(&settings));
    let mut vms: Vec<VmSample> = guests
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut vm = VmSample::new(
                format!("vm-{i:02}"),
                Bytes(g.configured),
                Bytes(g.configured),
            );
            vm.min = g.min.map(Bytes);
            vm.class = g.class;
            vm.priority = g.priority;
            vm.overhead = Bytes::mib(64);
            vm
        })
        .collect();
    let mut resident: Vec<Bytes> = vms.iter().map(|vm| vm.actual).collect();
    let mut last = None;
    let mut late_moves = 0;
    for k in 0..ticks {
        for ((vm, g), resident) in vms.iter_mut().zip(guests).zip(&mut resident) {
            vm.stats = steady_stats(g, vm.actual, follow);
            let touched = Bytes(g.used + g.cache).min(vm.actual);
            *resident = (*resident).min(vm.actual).max(touched);
        }
        let free = match host {
            HostInput::Constant { free } => Bytes(free),
            HostInput::Follows => {
                let held = vms.iter().zip(&resident).map(|(v, r)| *r + v.overhead);
                Bytes(host_total) - held.sum::<Bytes>()
            }
        };
        let obs = Observation {
            time: Millis(interval.0 * k as u64),
            host: HostSample {
                total: Bytes(host_total),
                free,
                available: free,
                ..HostSample::default()
            },
            vms: vms.clone(),
        };
        let d = ctl.tick(&obs);
        if !d.actions.is_empty() {
            last = Some(k);
        }
        if k + QUIET >= ticks {
            late_moves += d.actions.len();
        }
        for a in &d.actions {
            if let (Some(to), Some(vm)) =
                (a.balloon_target(), vms.iter_mut().find(|v| v.name == a.vm))
            {
                vm.actual = to;
            }
        }
    }
    Activity { last, late_moves }
}

/// Ticks after which `aerostat` under constant input must be quiet: its slowest cache probe
/// (1 % of configured memory per minute, over at most 40 % of it) takes 40 minutes, i.e.
/// 2400 ticks of 1 s (and when the host is short, targets follow the probe); the rest is
/// margin.
const AEROSTAT_SETTLE: usize = 3000;
/// Ticks after which the baselines must be quiet (MoM moves ≤ 5 % per 15 s cycle and as
/// little as ~1 % when squeezing below guest_used, Proxmox 100 MiB per 10 s cycle: 16 GiB
/// takes 164 cycles).
const BASELINE_SETTLE: usize = 1000;
/// Quiet ticks checked after that.
const QUIET: usize = 300;
/// `aerostat`'s inflate hold (30 s) in its 1 s ticks.
const AEROSTAT_INFLATE_HOLD_TICKS: usize = 30;

/// Whether the guests' burst rooms at `aerostat`'s 1 s interval, all together, are at most
/// the tenth of the host over which it ramps them with the host's available share (256 MiB
/// per guest, in proportion to its size above 4 GiB up to twice that, plus 16 MiB). Only
/// then can the rooms not carry the host back and forth across the band. On a smaller host they can, and a guest whose page cache fills each deflate
/// cycles: a 6 GiB guest on a 2.4 GiB host moved 24 MiB each way every 31 s, its 400 MiB
/// room swinging the host's share 16 points across a band of 10 (a known limitation,
/// `docs/policy.md`; widening the band to the rooms cost two guest OOM kills in the
/// reviewers' scenarios).
fn burst_rooms_fit_the_band(guests: &[SteadyGuest], host_total: u64) -> bool {
    let interval_s = PolicyKind::Aerostat.native_interval().as_secs_f64();
    let rooms: f64 = guests
        .iter()
        .map(|g| aerostat::whole_burst_room(g.configured as f64, interval_s))
        .sum();
    rooms <= host_total as f64 * aerostat::BURST_ROOM_BAND
}

fn host_total_for(guests: &[SteadyGuest], pct: u64) -> u64 {
    let sum: u64 = guests.iter().map(|g| g.configured + 64 * MIB).sum();
    sum / 100 * pct
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn aerostat_settles_under_constant_input(
        guests in prop::collection::vec(steady_guest(), 1..=12),
        host_pct in 30u64..=150,
        reserve_gib in 0u64..=4,
        follow in any::<bool>(),
    ) {
        let total = host_total_for(&guests, host_pct);
        let n = AEROSTAT_SETTLE + QUIET;
        // The host follows the balloons only where the guests' burst rooms fit the band (see
        // `burst_rooms_fit_the_band`), whether or not their statistics follow too.
        let fits = burst_rooms_fit_the_band(&guests, total);
        let hosts: &[HostInput] = if fits {
            &[HostInput::Constant { free: total / 3 }, HostInput::Follows]
        } else {
            &[HostInput::Constant { free: total / 3 }]
        };
        for &host in hosts {
            let last = activity(
                PolicyKind::Aerostat, &guests, total, host, reserve_gib * GIB, follow, n,
            ).last;
            prop_assert!(
                last.is_none_or(|k| k < AEROSTAT_SETTLE),
                "aerostat still acting at tick {:?} of {} (host {:?})", last, n, host
            );
        }
        // Where the rooms outgrow the band, the closed loop may cycle (docs/policy.md item
        // 7). An empirical bound, not a guarantee — the inflate hold delays only the first
        // inflation after a deflate: all guests together move no more than twice per guest
        // per hold (30 s), as every cycle found does (a move each way every 31 s). With a
        // host that charged deflated room at once, a guest stepping down in three 24 MiB
        // bites made 36 moves in 300 ticks.
        if !fits {
            let a = activity(
                PolicyKind::Aerostat, &guests, total, HostInput::Follows, reserve_gib * GIB,
                follow, n,
            );
            let bound = 2 * guests.len() * QUIET.div_ceil(AEROSTAT_INFLATE_HOLD_TICKS);
            prop_assert!(
                a.late_moves <= bound,
                "{} moves in the last {} ticks on a tiny host, more than {}", a.late_moves,
                QUIET, bound
            );
        }
    }

    #[test]
    fn mom_settles_under_constant_input(
        guests in prop::collection::vec(steady_guest(), 1..=12),
        host_pct in 30u64..=150,
        // Host free in (0 %, 5 %] makes MoM squeeze at −(5 % − free) of the guest per
        // cycle plus its averaging lag: monotone, but arbitrarily slow as free → 5 %.
        free_pct in prop_oneof![Just(0u64), 6u64..=100],
        follow in any::<bool>(),
    ) {
        // When host free is ≤ 5 %, MoM squeezes every guest below its own used memory down
        // to balloon_min, by about 1 % per cycle (its averaged guest_used lags): monotone,
        // but thousands of cycles to a floor near 0. vdsm always sets a floor; keep it ≥ 10 %.
        let guests: Vec<SteadyGuest> = guests
            .into_iter()
            .map(|g| SteadyGuest { min: Some(g.min.unwrap_or(0).max(g.configured / 10)), ..g })
            .collect();
        let total = host_total_for(&guests, host_pct);
        let n = BASELINE_SETTLE + QUIET;
        // Only a constant host: when the host follows the balloons, MoM's 20 % threshold
        // without hysteresis makes it oscillate around the threshold, as the original does.
        let host = HostInput::Constant { free: total / 100 * free_pct };
        for kind in [PolicyKind::Mom, PolicyKind::Static] {
            let last = activity(kind, &guests, total, host, GIB, follow, n).last;
            prop_assert!(
                last.is_none_or(|k| k < BASELINE_SETTLE),
                "{} still acting at tick {:?} of {}", kind, last, n
            );
        }
    }

    /// Proxmox settles under a constant host when its VMs are alike (same size, floor and
    /// shares). With unlike VMs it need not: see `proxmox_cycles_when_its_grow_goal_cannot_be_met`.
    #[test]
    fn proxmox_settles_under_constant_input_with_alike_vms(
        guest in steady_guest(),
        n_vms in 1usize..=12,
        host_pct in 30u64..=150,
        free_pct in 0u64..=100,
        follow in any::<bool>(),
    ) {
        let guests = vec![guest; n_vms];
        let total = host_total_for(&guests, host_pct);
        let n = BASELINE_SETTLE + QUIET;
        let host = HostInput::Constant { free: total / 100 * free_pct };
        let last = activity(PolicyKind::Proxmox, &guests, total, host, GIB, follow, n).last;
        prop_assert!(
            last.is_none_or(|k| k < BASELINE_SETTLE),
            "proxmox still acting at tick {:?} of {}", last, n
        );
    }
}

/// Characterisation, not a bug in aerostat: Proxmox's `compute_alg1` (reproduced rule for
/// rule) shrinks a VM above its share-proportional size by 100 MiB even while the host wants
/// to grow, then grows it back by the goal. When the host's numbers never change (the grow
/// goal can never be met) this is a limit cycle: 2 GiB → 1.90 GiB → … → 2 GiB, every 7 cycles.
#[test]
fn proxmox_cycles_when_its_grow_goal_cannot_be_met() {
    let g = |configured: u64| SteadyGuest {
        configured,
        min: Some(configured / 100),
        used: 0,
        cache: 0,
        class: VmClass::General,
        priority: 1.0,
        scan_stats: false,
    };
    let guests = [g(GIB), g(2 * GIB)];
    let total = host_total_for(&guests, 30);
    let free = total / 100 * 22; // used 78 % < target 80 %: goal ≈ +19 MiB, never met
    let last = activity(
        PolicyKind::Proxmox,
        &guests,
        total,
        HostInput::Constant { free },
        GIB,
        false,
        BASELINE_SETTLE + QUIET,
    )
    .last;
    assert_eq!(last, Some(BASELINE_SETTLE + QUIET - 1), "the cycle stopped");
}

// ---------------------------------------------------------------------------------------
// Decisions as JSON.

fn rule() -> impl Strategy<Value = Rule> {
    prop::sample::select(vec![
        Rule::MomShrink,
        Rule::MomGrow,
        Rule::MomMinGuarantee,
        Rule::ProxmoxGrow,
        Rule::ProxmoxShrink,
        Rule::Deflate,
        Rule::DeflatePressure,
        Rule::Reclaim,
        Rule::HostShort,
        Rule::BalloonStalled,
        Rule::Bounds,
        Rule::GuardFloor,
        Rule::GuardMax,
        Rule::GuardReserve,
    ])
}

fn decision() -> impl Strategy<Value = Decision> {
    let action = (
        any::<String>(),
        any::<u64>(),
        any::<u64>(),
        rule(),
        any::<String>(),
    )
        .prop_map(|(vm, from, to, rule, reason)| Action {
            vm,
            kind: ActionKind::Balloon {
                from: Bytes(from),
                to: Bytes(to),
            },
            rule,
            reason,
        });
    let alert = prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(n, c)| Alert::FloorsDoNotFit {
            need: Bytes(n),
            capacity: Bytes(c),
        }),
        any::<u64>().prop_map(|u| Alert::WorkingSetsDoNotFit { unmet: Bytes(u) }),
        (any::<String>(), any::<u64>())
            .prop_map(|(vm, k)| Alert::BalloonKeepsMemory { vm, kept: Bytes(k) }),
    ];
    (
        any::<u64>(),
        any::<String>(),
        prop::collection::vec(action, 0..6),
        prop::collection::vec(alert, 0..3),
    )
        .prop_map(|(time, policy, actions, alerts)| Decision {
            time: Millis(time),
            policy: policy.into(),
            actions,
            alerts,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decision_json_round_trips(d in decision()) {
        let json = serde_json::to_string(&d).expect("serialize");
        let back: Decision = serde_json::from_str(&json).expect("deserialize");
        prop_assert_eq!(&back, &d);
        let pretty = serde_json::to_string_pretty(&d).expect("serialize");
        prop_assert_eq!(serde_json::from_str::<Decision>(&pretty).expect("deserialize"), d);
    }

    #[test]
    fn rule_names_are_the_serde_names(r in rule()) {
        prop_assert_eq!(
            serde_json::to_string(&r).expect("serialize"),
            format!("\"{}\"", r.as_str())
        );
    }
}

#[test]
fn decision_json_shape_is_stable() {
    let d = Decision {
        time: Millis(2000),
        policy: "aerostat".into(),
        actions: vec![Action {
            vm: "web-0".into(),
            kind: ActionKind::Balloon {
                from: Bytes(2),
                to: Bytes(1),
            },
            rule: Rule::Reclaim,
            reason: "r".into(),
        }],
        alerts: vec![],
    };
    assert_eq!(
        serde_json::to_string(&d).expect("serialize"),
        r#"{"time":2000,"policy":"aerostat","actions":[{"vm":"web-0","action":"balloon","from":2,"to":1,"rule":"reclaim","reason":"r"}]}"#
    );
}

// Reasons written up front or deferred, and per-VM state kept by name.

/// Proposes fixed targets, with reasons written up front or deferred.
#[derive(Debug)]
struct Fixed {
    targets: Vec<(usize, Bytes)>,
    deferred: bool,
}

impl Policy for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }
    fn guards(&self) -> GuardConfig {
        GuardConfig::passthrough()
    }
    fn propose_into(&mut self, _obs: &Observation, _targets: &[Bytes], out: &mut Vec<Proposal>) {
        out.extend(self.targets.iter().map(|&(vm, target)| Proposal {
            vm,
            target,
            rule: Rule::Reclaim,
            reason: if self.deferred {
                Reason::Deferred
            } else {
                Reason::Text(format!("wish {vm}"))
            },
        }));
    }
    fn explain(&self, _obs: &Observation, vm: usize) -> String {
        format!("deferred wish {vm}")
    }
}

fn obs(vms: Vec<VmSample>) -> Observation {
    Observation {
        time: Millis::ZERO,
        host: HostSample {
            total: Bytes::gib(64),
            ..HostSample::default()
        },
        vms,
    }
}

fn vm(name: &str) -> VmSample {
    let mut v = VmSample::new(name, Bytes::gib(4), Bytes::gib(2));
    v.min = Some(Bytes::gib(1));
    v
}

#[test]
fn bound_guards_explain_themselves() {
    for deferred in [false, true] {
        let policy = Fixed {
            targets: vec![(0, Bytes::mib(512)), (1, Bytes::gib(8)), (2, Bytes::gib(3))],
            deferred,
        };
        let mut c = Controller::new(Box::new(policy));
        let d = c.tick(&obs(vec![vm("a"), vm("b"), vm("c")]));
        let prefix = if deferred { "deferred wish" } else { "wish" };
        let reasons: Vec<(&str, Rule, &str)> = d
            .actions
            .iter()
            .map(|a| (a.vm.as_str(), a.rule, a.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "a",
                    Rule::GuardFloor,
                    format!("{prefix} 0 (raised from 512 MiB to the floor 1.00 GiB)").as_str()
                ),
                (
                    "b",
                    Rule::GuardMax,
                    format!("{prefix} 1 (lowered from 8.00 GiB to the configured 4.00 GiB)")
                        .as_str()
                ),
                ("c", Rule::Reclaim, format!("{prefix} 2").as_str()),
            ]
        );
        assert_eq!(d.policy, "fixed");
    }
}

#[test]
fn state_follows_the_vms_by_name() {
    let policy = Fixed {
        targets: vec![(0, Bytes::gib(3))],
        deferred: false,
    };
    let mut c = Controller::new(Box::new(policy));
    c.tick(&obs(vec![vm("b"), vm("a")]));
    assert_eq!(c.target_of("a"), Some(Bytes::gib(3)));
    assert_eq!(c.target_of("b"), Some(Bytes::gib(2)));
    // `a` leaves, `c` arrives: `b` keeps its state, `a`'s is forgotten.
    c.tick(&obs(vec![vm("c"), vm("b")]));
    let names: Vec<&str> = c.states().map(|(n, _)| n).collect();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(c.target_of("b"), Some(Bytes::gib(3)));
    assert_eq!(c.target_of("a"), None);
}

/// One tick of a fresh controller with the aerostat guards (2 GiB reserve) at t = 100 s,
/// the policy proposing `proposals` (VM index, target).
fn reserve_tick(
    proposals: Vec<(usize, Bytes)>,
    total: Bytes,
    available: Bytes,
    vms: Vec<VmSample>,
) -> Decision {
    reserve_tick_seeing(vec![], proposals, total, available, vms)
}

/// `reserve_tick` with the policy's working-set estimates (by VM index; a guest without one
/// is blind, `blind::hold`).
fn reserve_tick_seeing(
    working_sets: Vec<Option<WorkingSet>>,
    proposals: Vec<(usize, Bytes)>,
    total: Bytes,
    available: Bytes,
    vms: Vec<VmSample>,
) -> Decision {
    let next = Arc::new(Mutex::new(proposals));
    let mut ctl = Controller::with_guards(
        Box::new(Scripted {
            next,
            working_sets,
            ..Scripted::default()
        }),
        aerostat_guards(Bytes::gib(2)),
    );
    ctl.tick(&Observation {
        time: Millis::secs(100),
        host: HostSample {
            total,
            available,
            ..HostSample::default()
        },
        vms,
    })
}

/// A daemon starting on a full host: one guest has touched all of its memory, the others
/// hold gigabytes they never touched but may give only a step per tick. (All of the same
/// priority here: were the db more important, strict priority alone would spare it.)
/// With the excess available on the host, the guard takes the untouched memory over the
/// next ticks and leaves the db's cache alone; without it, it squeezes. (The policy sees the
/// db working in 11 GiB: a blind guest's touched memory would wait for the last pass.)
#[test]
fn reserve_waits_for_untouched_memory_only_while_the_host_has_room() {
    let vms = || {
        let mut db = VmSample::new("db", Bytes::gib(12), Bytes::gib(12));
        db.min = Some(Bytes::gib(11));
        db.rss = Some(Bytes::gib(12));
        let webs = (0..4).map(|i| {
            let mut w = VmSample::new(format!("web-{i}"), Bytes::gib(6), Bytes::gib(6));
            w.rss = Some(Bytes::mib(3584));
            w
        });
        std::iter::once(db).chain(webs).collect::<Vec<_>>()
    };
    let db_works_in = WorkingSet {
        anon: Bytes::gib(11),
        hot: Bytes::gib(11),
    };
    let tick = |available: Bytes| {
        reserve_tick_seeing(
            vec![Some(db_works_in)],
            vec![],
            Bytes::gib(32),
            available,
            vms(),
        )
    };
    // 36 GiB committed, 30 GiB capacity: the webs give 512 MiB each this tick (2 GiB);
    // 4 GiB are left, and the webs hold 8 GiB more untouched memory. The host has its
    // 2 GiB reserve available (not the whole 4 GiB excess): it waits.
    let roomy = tick(Bytes::gib(2));
    assert!(
        roomy.actions.iter().all(|a| a.vm != "db"),
        "{:?}",
        roomy.actions
    );
    assert_eq!(roomy.actions.len(), 4, "{:?}", roomy.actions);
    let tight = tick(Bytes::mib(1536));
    assert!(
        tight.actions.iter().any(|a| a.vm == "db"),
        "{:?}",
        tight.actions
    );
}

/// A balloon that moves, but too slowly to close the gap, keeps untouched memory committed
/// tick after tick: the reserve guard waits at most 30 s, then squeezes. One that does not
/// move at all is not waited for. (Same priority: a more important db would be spared by
/// strict priority while the web's balloon follows.)
#[test]
fn reserve_waits_no_longer_than_its_limit() {
    let mut db = VmSample::new("db", Bytes::gib(12), Bytes::gib(12));
    db.min = Some(Bytes::gib(11));
    db.rss = Some(Bytes::gib(12));
    let run = |web_mib_per_tick: u64| {
        let mut ctl = Controller::with_guards(
            Box::new(Scripted::default()),
            aerostat_guards(Bytes::gib(2)),
        );
        let mut squeezed_at = None;
        for secs in [0, 10, 20, 31] {
            let mut web = VmSample::new(
                "web",
                Bytes::gib(6),
                Bytes::gib(6) - Bytes::mib(web_mib_per_tick * secs / 10),
            );
            web.rss = Some(Bytes::gib(1));
            let d = ctl.tick(&Observation {
                time: Millis::secs(secs),
                host: HostSample {
                    total: Bytes::gib(17),
                    available: Bytes::gib(5),
                    ..HostSample::default()
                },
                vms: vec![db.clone(), web],
            });
            if squeezed_at.is_none() && d.actions.iter().any(|a| a.vm == "db") {
                squeezed_at = Some(secs);
            }
        }
        squeezed_at
    };
    // 100 MiB a tick: it follows, too slowly; squeezed once the 30 s are over.
    assert_eq!(run(100), Some(31));
    // Not at all: no wait once it has missed a target.
    assert_eq!(run(0), Some(10));
}

/// A 32 GiB guest that touched 1 GiB hands the rest back at the step bound (512 MiB a
/// tick) while a db beside it must not be squeezed; returns the size the big guest reports
/// after 70 ticks. `report_late`: its memory above 2 GiB is a virtio-mem device, which
/// reports the target before last (blocks leave the guest's free lists a tick before they
/// are reported gone).
fn big_guest_hands_back_beside_a_db(report_late: bool) -> Bytes {
    let mut db = VmSample::new("db", Bytes::gib(12), Bytes::gib(12));
    db.rss = Some(Bytes::gib(12));
    let mut ctl = Controller::with_guards(
        Box::new(Scripted::default()),
        aerostat_guards(Bytes::gib(2)),
    );
    let (mut last, mut reported) = (Bytes::gib(32), Bytes::gib(32));
    for secs in 0..70 {
        let mut big = VmSample::new("big", Bytes::gib(32), reported);
        big.rss = Some(Bytes::gib(1));
        if report_late {
            big.blocks = Some(Blocks {
                boot: Bytes::gib(2),
                step: Bytes::mib(2),
                balloon_trims: false,
            });
        }
        let d = ctl.tick(&Observation {
            time: Millis::secs(secs),
            host: HostSample {
                total: Bytes::gib(18),
                available: Bytes::gib(5),
                ..HostSample::default()
            },
            vms: vec![db.clone(), big],
        });
        assert!(
            d.actions.iter().all(|a| a.vm != "db"),
            "tick {secs}: the db was squeezed: {:?}",
            d.actions
        );
        if report_late {
            reported = last;
        }
        if let Some(t) = d
            .actions
            .iter()
            .find(|a| a.vm == "big")
            .and_then(Action::balloon_target)
        {
            last = t;
        }
        if !report_late {
            reported = last;
        }
    }
    reported
}

/// 60 ticks to hand back 31 GiB: progress, not creeping. The wait must not run out at 30 s
/// and squeeze the db's touched memory while the host has room (`unseen-7372`: 1 GiB
/// guests squeezed below their working sets and OOM-killed, with 30 GiB of the host free).
#[test]
fn reserve_waits_while_balloons_hand_memory_back_at_the_step_bound() {
    let reported = big_guest_hands_back_beside_a_db(false);
    assert!(reported <= Bytes::gib(4), "{reported}");
}

/// A device reporting a tick late is a whole step above its last target: still following,
/// not stuck. (Counted as a stuck balloon, the simulator's `overcommitted` with virtio-mem
/// squeezed guests into their hot cache at start-up, 4.5 stall-s where it had none.) And it
/// unplugs a step a tick, as a balloon does: counted from the size it reports, the step
/// bound let it go a step every other tick (14.5 GiB reported after 70 ticks).
#[test]
fn reserve_waits_for_a_virtio_mem_device_that_reports_a_tick_late() {
    let reported = big_guest_hands_back_beside_a_db(true);
    assert!(reported <= Bytes::gib(4), "{reported}");
}

/// The reserve guard and virtio-mem blocks: an excess smaller than a block is taken from a
/// guest that can give it exactly; where only a VM with blocks can give, it gives a whole
/// block — of memory that costs it nothing, or of its working set when host swap cannot
/// hold the rest. (Before, "less than one block: nothing" left the host short for good: a
/// property-test case with 1 GiB blocks kept 496 MiB of the reserve in the guests.)
#[test]
fn reserve_takes_a_whole_block_when_only_a_virtio_mem_vm_can_give() {
    let vms = |plain_min: Bytes| {
        let mut mem = VmSample::new("mem", Bytes::gib(8), Bytes::gib(6));
        mem.rss = Some(Bytes::gib(3));
        mem.blocks = Some(Blocks {
            boot: Bytes::gib(4),
            step: Bytes::gib(1),
            balloon_trims: false,
        });
        let mut plain = VmSample::new("plain", Bytes::gib(4), Bytes::gib(2));
        plain.rss = Some(Bytes::gib(1));
        plain.min = Some(plain_min);
        vec![mem, plain]
    };
    // 8 GiB committed against 10 GiB − 496 MiB of host less its 2 GiB reserve.
    let total = Bytes::gib(10) - Bytes::mib(496);
    let target = |d: &Decision, vm: &str| {
        d.actions
            .iter()
            .find(|a| a.vm == vm)
            .and_then(Action::balloon_target)
    };
    // The plain guest can give the 496 MiB: it does, and no block leaves.
    let d = reserve_tick(vec![], total, Bytes::ZERO, vms(Bytes::gib(1)));
    assert_eq!(
        target(&d, "plain"),
        Some(Bytes::gib(2) - Bytes::mib(496)),
        "{d:?}"
    );
    assert_eq!(target(&d, "mem"), None, "{d:?}");
    // The plain guest is at its floor: the virtio-mem guest gives a whole block of the
    // memory it never touched — whatever host swap could hold.
    let d = reserve_tick(vec![], total, Bytes::ZERO, vms(Bytes::gib(2)));
    assert_eq!(target(&d, "mem"), Some(Bytes::gib(5)), "{d:?}");
    assert_eq!(target(&d, "plain"), None, "{d:?}");
    let mut ctl = Controller::with_guards(
        Box::new(Scripted::default()),
        aerostat_guards(Bytes::gib(2)),
    );
    let d = ctl.tick(&Observation {
        time: Millis::secs(100),
        host: HostSample {
            total,
            swap_total: Bytes::gib(1),
            ..HostSample::default()
        },
        vms: vms(Bytes::gib(2)),
    });
    assert_eq!(target(&d, "mem"), Some(Bytes::gib(5)), "{d:?}");
    // Were all 6 GiB its processes' memory, the block would come out of its working set:
    // it goes only when host swap cannot hold the 496 MiB left.
    let touched = |swap_total: Bytes| {
        let mut vms = vms(Bytes::gib(2));
        vms[0].rss = Some(Bytes::gib(6));
        let script = Scripted {
            working_sets: vec![Some(WorkingSet {
                anon: Bytes::gib(6),
                hot: Bytes::gib(6),
            })],
            ..Scripted::default()
        };
        let mut ctl = Controller::with_guards(Box::new(script), aerostat_guards(Bytes::gib(2)));
        ctl.tick(&Observation {
            time: Millis::secs(100),
            host: HostSample {
                total,
                swap_total,
                ..HostSample::default()
            },
            vms,
        })
    };
    let d = touched(Bytes::ZERO);
    assert_eq!(target(&d, "mem"), Some(Bytes::gib(5)), "{d:?}");
    let d = touched(Bytes::mib(496));
    assert_eq!(target(&d, "mem"), None, "{d:?}");
    let d = touched(Bytes::mib(495));
    assert_eq!(target(&d, "mem"), Some(Bytes::gib(5)), "{d:?}");
}

/// Block rounding above hot layers is left to host swap (`grid_rounding`): four guests of
/// 2 GiB with 1 GiB of boot memory, 1 GiB blocks and no balloon (boot memory is their floor)
/// each need 1.3 GiB, rounded up to 2 GiB, and the host holds 6.5 GiB of the 8. The 1.5 GiB
/// excess is less than the 2.8 GiB the grid rounds up: while host swap can hold it, nobody
/// is squeezed below the hot layer (before, one guest went to 1 GiB, into its hot cache,
/// once the guard's 30 s hold ran out); with less swap, a guest gives a block for the rest
/// (the swap is not counted twice), and without swap two guests do.
#[test]
fn block_rounding_above_hot_layers_is_left_to_host_swap() {
    let tick = |swap_total: Bytes| {
        let vms = (0..4)
            .map(|i| {
                let mut vm = VmSample::new(format!("g{i}"), Bytes::gib(2), Bytes::gib(2));
                vm.min = Some(Bytes::gib(1));
                vm.rss = Some(Bytes::gib(2));
                vm.blocks = Some(Blocks {
                    boot: Bytes::gib(1),
                    step: Bytes::gib(1),
                    balloon_trims: false,
                });
                vm
            })
            .collect();
        let script = Scripted {
            working_sets: vec![
                Some(WorkingSet {
                    anon: Bytes::gib(1),
                    hot: Bytes::mib(1331),
                });
                4
            ],
            ..Scripted::default()
        };
        let mut ctl = Controller::with_guards(Box::new(script), aerostat_guards(Bytes::gib(2)));
        // Past the 30 s the guard holds a layer while guests above it may give more.
        let mut obs = Observation {
            time: Millis::ZERO,
            host: HostSample {
                total: Bytes::mib(8704),
                swap_total,
                ..HostSample::default()
            },
            vms,
        };
        for t in 100..140 {
            obs.time = Millis::secs(t);
            ctl.tick(&obs);
        }
        (0..4)
            .filter_map(|i| ctl.target_of(&format!("g{i}")))
            .filter(|&t| t < Bytes::gib(2))
            .collect::<Vec<_>>()
    };
    assert_eq!(tick(Bytes::gib(2)), vec![]);
    assert_eq!(tick(Bytes::mib(1536)), vec![]);
    // Swap for 1 GiB of the rounding leaves none for the 512 MiB rest: one block goes.
    assert_eq!(tick(Bytes::gib(1)), vec![Bytes::gib(1)]);
    assert_eq!(tick(Bytes::ZERO), vec![Bytes::gib(1), Bytes::gib(1)]);
}

/// A virtio-mem VM's step floor (`VmSample::inflate_floor`): a block step below its last
/// target while the device reports a tick late, never more than two below the size it
/// reports (a stuck device), and below boot memory, where the balloon moves, never more
/// than the plain step (a review found a 1 GiB block step asking a balloon for 1 GiB at once
/// under a 512 MiB step).
#[test]
fn the_step_floor_of_a_virtio_mem_vm() {
    let mut vm = VmSample::new("v", Bytes::gib(8), Bytes::gib(5));
    vm.blocks = Some(Blocks {
        boot: Bytes::gib(4),
        step: Bytes::gib(1),
        balloon_trims: false,
    });
    let step = Bytes::mib(512);
    // The device reports 5 GiB, a tick behind its last target, boot memory.
    assert_eq!(vm.inflate_floor(step, Bytes::gib(4)), Bytes::mib(3584));
    // Higher up: a block step below the last target ...
    vm.actual = Bytes::gib(7);
    assert_eq!(vm.inflate_floor(step, Bytes::gib(6)), Bytes::gib(5));
    // ... and no further than two below what it reports, however low the last target.
    assert_eq!(vm.inflate_floor(step, Bytes::gib(4)), Bytes::gib(5));
    // A balloon alone: a step below what it reports.
    vm.blocks = None;
    assert_eq!(
        vm.inflate_floor(step, Bytes::gib(4)),
        Bytes::mib(7 * 1024 - 512)
    );
}

/// Big guests booting at once hold many gigabytes they have not touched, which the step
/// bound releases over a few ticks. Meanwhile a running guest (`app`, named to sort first:
/// the controller orders VMs by name) under pressure asks for
/// memory: with the host's reserve still available it gets it, and nobody's touched
/// memory is taken; once the host has dipped into its reserve, the growth is cut.
#[test]
fn growth_waits_on_untouched_memory_not_the_other_way_round() {
    let vms = || {
        let mut app = VmSample::new("app", Bytes::gib(8), Bytes::gib(4));
        app.rss = Some(Bytes::gib(4));
        let boots = (0..2).map(|i| {
            let mut b = VmSample::new(format!("boot-{i}"), Bytes::gib(16), Bytes::gib(16));
            b.rss = Some(Bytes::gib(2));
            b
        });
        std::iter::once(app).chain(boots).collect::<Vec<_>>()
    };
    let tick =
        |available: Bytes| reserve_tick(vec![(0, Bytes::gib(5))], Bytes::gib(32), available, vms());
    // 37 GiB asked of a 30 GiB capacity: the boots give 512 MiB each this tick and hold
    // 26 GiB more untouched memory; the host has 4 GiB available (its reserve is 2 GiB).
    let roomy = tick(Bytes::gib(4));
    let app = roomy.actions.iter().find(|a| a.vm == "app");
    assert_eq!(
        app.and_then(Action::balloon_target),
        Some(Bytes::gib(5)),
        "{:?}",
        roomy.actions
    );
    assert_eq!(roomy.actions.len(), 3, "{:?}", roomy.actions);
    // The app's growth is cut with the reserve available but not the growth on top of it
    // (2.5 GiB: the growth is memory the app touches at once; the boots' untouched memory
    // frees none of it now), and without the reserve available (1 GiB).
    for available in [Bytes::mib(2560), Bytes::gib(1)] {
        let d = tick(available);
        assert!(
            d.actions
                .iter()
                .all(|a| a.vm != "app" || a.balloon_target() < Some(Bytes::gib(5))),
            "available {available}: {:?}",
            d.actions
        );
    }
}

/// The reserve is restored at the pace of the lower-priority guests: a small important
/// guest keeps its touched memory while a big unimportant one, far above its floor, can
/// give only a step this tick; once that one is at its floor, the important one gives too.
#[test]
fn touched_memory_is_taken_strictly_by_priority() {
    let vms = |big_actual: Bytes| {
        let mut big = VmSample::new("big", Bytes::gib(12), big_actual);
        big.min = Some(Bytes::gib(3));
        big.rss = Some(big_actual);
        let mut small = VmSample::new("small", Bytes::gib(1), Bytes::gib(1));
        small.priority = 3.0;
        small.min = Some(Bytes::mib(256));
        small.rss = Some(Bytes::gib(1));
        vec![big, small]
    };
    // The policy sees the big guest working in no more than its floor (a blind guest's
    // touched memory would wait for the last pass, `blind::hold`).
    let big_works_in = || {
        vec![Some(WorkingSet {
            anon: Bytes::gib(3),
            hot: Bytes::gib(3),
        })]
    };
    let tick = |big_actual: Bytes, total: Bytes| {
        reserve_tick_seeing(big_works_in(), vec![], total, Bytes::ZERO, vms(big_actual))
    };
    // 13 GiB on a 6 GiB capacity: the big guest gives its 512 MiB step, the small one
    // nothing, although the excess stays.
    let d = tick(Bytes::gib(12), Bytes::gib(8));
    assert!(d.actions.iter().all(|a| a.vm != "small"), "{:?}", d.actions);
    assert!(d.actions.iter().any(|a| a.vm == "big"), "{:?}", d.actions);
    // 4.25 GiB on 3.5 GiB: the big guest gives its last 256 MiB above its floor, and then
    // the small one gives the rest.
    let d = tick(Bytes::mib(3 * 1024 + 256), Bytes::mib(5632));
    assert!(d.actions.iter().any(|a| a.vm == "small"), "{:?}", d.actions);
    // The same for a small guest whose RSS is unknown (its step would otherwise go).
    let mut blind = vms(Bytes::gib(12));
    blind[1].rss = None;
    let d = reserve_tick_seeing(big_works_in(), vec![], Bytes::gib(8), Bytes::ZERO, blind);
    assert!(d.actions.iter().all(|a| a.vm != "small"), "{:?}", d.actions);
    // A big balloon that creeps (16 MiB a tick) holds the small guest back 30 s at most.
    let mut ctl = Controller::with_guards(
        Box::new(Scripted {
            working_sets: big_works_in(),
            ..Scripted::default()
        }),
        aerostat_guards(Bytes::gib(2)),
    );
    let mut squeezed_at = None;
    for secs in 0..40u64 {
        let d = ctl.tick(&Observation {
            time: Millis::secs(secs),
            host: HostSample {
                total: Bytes::gib(8),
                ..HostSample::default()
            },
            vms: vms(Bytes::gib(12) - Bytes::mib(16 * secs)),
        });
        if d.actions.iter().any(|a| a.vm == "small") {
            squeezed_at = Some(secs);
            break;
        }
    }
    assert_eq!(squeezed_at, Some(30));
}

/// Cold memory before hot cache before anonymous memory, whatever the priority: an important
/// guest booting with gigabytes of cache fills the host, and a small unimportant guest's floor
/// sits below its working set. The guard takes the big guest's cold cache (a step a tick) and
/// holds the small guest at its hot working set meanwhile, then the hot caches, and only once
/// no guest has more than its anonymous memory left does the small one go to its floor.
/// (`docs/examples/unseen-cache-first.toml`: 18 guest OOM kills before.)
#[test]
fn page_cache_goes_before_any_working_set() {
    let vms = |big_actual: Bytes| {
        let mut big = VmSample::new("big", Bytes::gib(12), big_actual);
        big.priority = 3.0;
        big.rss = Some(big_actual);
        let mut small = VmSample::new("small", Bytes::gib(1), Bytes::mib(640));
        small.priority = 0.5;
        small.min = Some(Bytes::mib(182));
        small.rss = Some(Bytes::mib(640));
        vec![big, small]
    };
    // The policy's estimates: the big guest works in 8 GiB (7 GiB anon), the small one in
    // 450 MiB (400 MiB anon).
    let working_sets = vec![
        Some(WorkingSet {
            anon: Bytes::gib(7),
            hot: Bytes::gib(8),
        }),
        Some(WorkingSet {
            anon: Bytes::mib(400),
            hot: Bytes::mib(450),
        }),
    ];
    let tick = |big_actual: Bytes, total: Bytes| {
        let policy = Scripted {
            working_sets: working_sets.clone(),
            ..Scripted::default()
        };
        Controller::with_guards(Box::new(policy), aerostat_guards(Bytes::gib(2))).tick(
            &Observation {
                time: Millis::secs(100),
                host: HostSample {
                    total,
                    ..HostSample::default()
                },
                vms: vms(big_actual),
            },
        )
    };
    let expect = |d: &Decision, vm: &str, mib: u64| {
        let target = d.actions.iter().find(|a| a.vm == vm);
        assert_eq!(
            target.and_then(Action::balloon_target),
            Some(Bytes::mib(mib)),
            "{vm}: {:?}",
            d.actions
        );
    };
    // 12.6 GiB on a 10 GiB capacity: the big guest gives a step of cold cache, the small one
    // its memory above its hot working set (190 MiB), nothing below it.
    let d = tick(Bytes::gib(12), Bytes::gib(12));
    expect(&d, "big", 11 * 1024 + 512);
    expect(&d, "small", 450);
    // The big guest at its hot working set: its hot cache goes a step, and the small one's
    // (50 MiB), not its anonymous memory.
    let d = tick(Bytes::gib(8), Bytes::mib(9 * 1024));
    expect(&d, "big", 7 * 1024 + 512);
    expect(&d, "small", 400);
    // The big guest down to its anonymous working set: now the small one goes to its floor.
    let d = tick(Bytes::gib(7), Bytes::mib(8 * 1024));
    expect(&d, "small", 182);
    // Without the policy's estimates the guard works as before: lowest priority first, to
    // its floor.
    let d = reserve_tick(vec![], Bytes::gib(12), Bytes::ZERO, vms(Bytes::gib(12)));
    expect(&d, "small", 182);
}

/// `unabsorbable-surge`: a guest on its way out still holds its memory, and the floors of all
/// the guests here exceed the host. No squeeze can restore the reserve then; while host swap
/// can hold the excess — counting the swap the guests' own pages already fill, since the
/// excess counts those pages too — the guard takes nothing below a guest's hot working set.
#[test]
fn hot_memory_stays_while_the_floors_do_not_fit_and_host_swap_holds_the_excess() {
    let tick = |swap_total_gib: u64| {
        let mut db = VmSample::new("db", Bytes::gib(12), Bytes::gib(8));
        db.min = Some(Bytes::gib(6));
        db.rss = Some(Bytes::gib(8));
        let mut leaving = VmSample::new("leaving", Bytes::gib(8), Bytes::gib(8));
        leaving.min = Some(Bytes::gib(8));
        leaving.migrating = true;
        let policy = Scripted {
            working_sets: vec![
                Some(WorkingSet {
                    anon: Bytes::gib(7),
                    hot: Bytes::gib(8),
                }),
                None,
            ],
            ..Scripted::default()
        };
        // Capacity 14 − 2 = 12 GiB; floors 6 + 8 = 14 GiB; committed 16 GiB: 4 GiB over.
        // Only 1 GiB of swap is free: the rest holds the guests' pages.
        Controller::with_guards(Box::new(policy), aerostat_guards(Bytes::gib(2))).tick(
            &Observation {
                time: Millis::secs(100),
                host: HostSample {
                    total: Bytes::gib(14),
                    swap_total: Bytes::gib(swap_total_gib),
                    swap_free: Bytes::gib(1),
                    ..HostSample::default()
                },
                vms: vec![db, leaving],
            },
        )
    };
    let db_target = |d: &Decision| {
        d.actions
            .iter()
            .find(|a| a.vm == "db")
            .and_then(Action::balloon_target)
    };
    let d = tick(8);
    assert_eq!(db_target(&d), None, "{:?}", d.actions);
    // Swap smaller than the excess: the squeeze goes on below the hot working set (a step
    // a tick).
    let d = tick(2);
    assert!(
        db_target(&d).is_some_and(|t| t < Bytes::gib(8)),
        "{:?}",
        d.actions
    );
}

/// A case the property test above found: a guest's burst room appeared whole once the host
/// had ROOMY_SHARE available, which took the host back below it, and the guest cycled
/// between two targets every ~31 ticks under constant input.
#[test]
fn aerostat_settles_where_its_own_burst_room_moves_the_host_across_roomy() {
    let g = |configured: u64, used: u64, cache: u64, class: VmClass| SteadyGuest {
        configured,
        min: None,
        used,
        cache,
        class,
        priority: 1.0,
        scan_stats: false,
    };
    let guests = vec![
        g(2 * GIB, 880_468_276, 64_424_508, VmClass::General),
        g(9 * GIB, 6_378_026_424, 1_352_914_696, VmClass::Interactive),
        g(3 * GIB, 2_093_796_510, 869_730_858, VmClass::Batch),
    ];
    assert_settles_on_a_following_host(&guests, 100);
}

/// `aerostat` on a host of `host_pct` % of the guests' sizes that follows their balloons,
/// their statistics following too, no reserve: quiet after AEROSTAT_SETTLE ticks.
fn assert_settles_on_a_following_host(guests: &[SteadyGuest], host_pct: u64) {
    let total = host_total_for(guests, host_pct);
    let n = AEROSTAT_SETTLE + QUIET;
    let last = activity(
        PolicyKind::Aerostat,
        guests,
        total,
        HostInput::Follows,
        0,
        true,
        n,
    )
    .last;
    assert!(
        last.is_none_or(|k| k < AEROSTAT_SETTLE),
        "still acting at tick {last:?} of {n}"
    );
}

/// The tiny-host limitation of docs/policy.md item 7, as the settle property found it: a
/// 6 GiB guest on a 2.4 GiB host, whose page cache fills each deflate, keeps a 400 MiB
/// burst room that swings the host's share across the band. It cycles — a move each way per
/// inflate hold, no faster.
#[test]
fn a_tiny_hosts_cycle_is_a_move_each_way_per_inflate_hold() {
    let guest = SteadyGuest {
        configured: 6 * GIB,
        min: None,
        used: 1_803_886_252,
        cache: 579_820_581,
        class: VmClass::Stateless,
        priority: 1.0,
        scan_stats: true,
    };
    let guests = [guest];
    let total = host_total_for(&guests, 39);
    assert!(!burst_rooms_fit_the_band(&guests, total));
    let n = AEROSTAT_SETTLE + QUIET;
    let a = activity(
        PolicyKind::Aerostat,
        &guests,
        total,
        HostInput::Follows,
        0,
        true,
        n,
    );
    assert!(
        a.late_moves > 0,
        "the documented cycle is gone: update docs/policy.md item 7"
    );
    assert!(
        a.late_moves <= 2 * QUIET.div_ceil(AEROSTAT_INFLATE_HOLD_TICKS),
        "{a:?}"
    );
}

/// The settle property's case that once cycled: one 1 GiB guest using 410 MiB on a host of
/// 718 MiB whose free memory follows its balloon. When the test's host counted every
/// deflated byte as resident at once, the 272 MiB burst room the guest kept at 25 %
/// available took the host to 0 %, where the room went, and back: a 180 MiB move every
/// 31 s. On a host that holds what the guest touched (`HostInput::Follows`), it settles.
#[test]
fn a_lone_guest_settles_when_the_host_follows_its_balloon() {
    let guest = SteadyGuest {
        configured: GIB,
        min: None,
        used: 429_496_720,
        cache: 0,
        class: VmClass::General,
        priority: 1.0,
        scan_stats: false,
    };
    assert_settles_on_a_following_host(&[guest], 66);
}

/// A guest without fresh stats keeps what the host saw it touch beyond its swap until the
/// last pass: a sighted guest's anonymous memory goes first, and the squeeze's own fall in
/// what the blind guest touches does not lower its hold. (Reviewer-2's `mixed-guest-agents`:
/// a Windows guest without a stats service, its layers at its floor, was the first squeezed,
/// below what its cold memory and its swap could hold: 164 OOM kills nobody could see.)
#[test]
fn a_blind_guest_keeps_what_it_touched_beyond_its_swap_until_the_last_pass() {
    let vms = |win_actual: Bytes, web_actual: Bytes| {
        let mut win = VmSample::new("win", Bytes::gib(6), win_actual);
        win.min = Some(Bytes::mib(1536));
        win.rss = Some(win_actual);
        win.guest_swap = Some(Bytes::gib(1));
        let mut web = VmSample::new("web", Bytes::gib(6), web_actual);
        web.min = Some(Bytes::mib(1536));
        web.rss = Some(web_actual);
        vec![web, win]
    };
    // The policy sees the web guest work in 2 GiB, 1.5 GiB of it anon; the Windows guest is
    // blind.
    let web_works_in = Some(WorkingSet {
        anon: Bytes::mib(1536),
        hot: Bytes::gib(2),
    });
    let mut ctl = Controller::with_guards(
        Box::new(Scripted {
            working_sets: vec![web_works_in, None],
            ..Scripted::default()
        }),
        aerostat_guards(Bytes::gib(2)),
    );
    let mut tick = |secs: u64, win: Bytes, web: Bytes, total_mib: u64| {
        let d = ctl.tick(&Observation {
            time: Millis::secs(secs),
            host: HostSample {
                total: Bytes::mib(total_mib),
                ..HostSample::default()
            },
            vms: vms(win, web),
        });
        let target = |vm: &str| {
            d.actions
                .iter()
                .find(|a| a.vm == vm)
                .and_then(Action::balloon_target)
        };
        (target("win"), target("web"))
    };
    let mib = |m: u64| Some(Bytes::mib(m));
    // Seen touching 4 GiB with 1 GiB of swap, it keeps 3 GiB; the web guest is at its hot
    // layer. Each tick the host is 512 MiB short: the blind guest gives what it holds above
    // 3 GiB ...
    assert_eq!(
        tick(0, Bytes::gib(4), Bytes::gib(2), 7680),
        (mib(3584), None)
    );
    assert_eq!(
        tick(1, Bytes::mib(3584), Bytes::gib(2), 7168),
        (mib(3072), None)
    );
    // ... and then, touching 3 GiB (2 GiB beyond its swap), it still keeps 3 GiB: the web
    // guest's hot cache goes first (at its floor as its layers were, the blind guest went) ...
    assert_eq!(
        tick(2, Bytes::gib(3), Bytes::gib(2), 6656),
        (None, mib(1536))
    );
    // ... and once every other guest is at its floor, the blind guest gives toward its own.
    assert_eq!(
        tick(3, Bytes::gib(3), Bytes::mib(1536), 6144),
        (mib(2560), None)
    );
}
