//! Admission: may one more guest start on this host?
//!
//! aerostat places no VM, but whatever does (a libvirt `prepare` hook, an orchestrator's
//! placement filter) can ask before it starts one, and get a yes or no with the numbers. The
//! answer comes from the same facts the controller and the escape use, three checks:
//!
//! 1. **Floors.** What no balloon can return — every guest's QEMU overhead plus its floor
//!    (all of its memory if nothing can resize it), the new one's included — fits the
//!    capacity. Otherwise the new guest starts the memory-pressure escape (or its alert) at
//!    once.
//! 2. **Working sets.** What the guests need now — each one's policy target (its working set
//!    and room, as the policy reads it), or its current size where the policy has none, plus
//!    overheads — and the new guest's expected need fit the capacity. Otherwise the policy
//!    would squeeze someone below what it needs.
//! 3. **Overcommit ratio** (only when the operator sets one, e.g. `aerostat plan`'s `R_max`):
//!    the seeds' rule that only guests a balloon (or virtio-mem) can resize are overcommitted.
//!    Guests nothing can resize count whole; the memory promised to the others counts ÷ R.
//!
//! Pure: the observation, the policy's targets and the capacity are inputs.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::escape::{floor_demand, floors_held};
use crate::observation::{Observation, VmSample};
use crate::units::Bytes;

/// The guest that wants to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewGuest {
    /// Its configured (maximum) memory.
    pub memory: Bytes,
    /// The floor the controller will keep it at, at least (capped at `memory`).
    pub floor: Bytes,
    /// Host memory it costs beyond guest memory (QEMU, page tables).
    pub overhead: Bytes,
    /// Whether aerostat can resize it (a balloon or virtio-mem). Without, all its memory is
    /// its floor and it is never overcommitted.
    pub resizable: bool,
    /// What it is expected to use once running (its working set and cache). `None`: its floor.
    pub need: Option<Bytes>,
}

impl NewGuest {
    /// What no balloon can return of it.
    fn floor_demand(&self) -> Bytes {
        self.overhead
            + if self.resizable {
                self.floor.min(self.memory)
            } else {
                self.memory
            }
    }

    /// What it is expected to hold: at least its floor, at most its memory.
    fn need(&self) -> Bytes {
        let floor = self.floor_demand() - self.overhead;
        self.overhead + self.need.unwrap_or(floor).max(floor).min(self.memory)
    }
}

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `floors`, `working_sets` or `ratio`.
    pub name: String,
    pub ok: bool,
    /// What the guests would need with the new one.
    pub need: Bytes,
    /// What the host can give them.
    pub limit: Bytes,
    pub why: String,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Admission {
    pub admit: bool,
    pub checks: Vec<Check>,
}

impl fmt::Display for Admission {
    /// One line: the verdict, then each check that failed (or all of them when none did).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed: Vec<&Check> = self.checks.iter().filter(|c| !c.ok).collect();
        if failed.is_empty() {
            write!(f, "admit: ")?;
            let all: Vec<&str> = self.checks.iter().map(|c| c.why.as_str()).collect();
            write!(f, "{}", all.join("; "))
        } else {
            write!(f, "refuse: ")?;
            let why: Vec<&str> = failed.iter().map(|c| c.why.as_str()).collect();
            write!(f, "{}", why.join("; "))
        }
    }
}

/// Whether `new` may start next to `obs`'s guests. `targets[i]`: the policy's target for
/// `obs.vms[i]`, if it has one; `capacity`: host total − reserve (+ what KSM saves, − what
/// balloons keep beyond their claims and what guests it does not drive hold), as the
/// controller counts it; `max_ratio`: the
/// overcommit ratio the operator allows, if any. `pending`: guests admitted before and not
/// running yet, counted as `new` is (so that two placers asking at once do not both get the
/// same room).
pub fn admit(
    obs: &Observation,
    targets: &[Option<Bytes>],
    capacity: Bytes,
    new: &NewGuest,
    pending: &[NewGuest],
    max_ratio: Option<f64>,
) -> Admission {
    let mut checks = Vec::with_capacity(3);
    let starting = || pending.iter().chain(std::iter::once(new));
    let with_it = if pending.is_empty() {
        "with it".to_string()
    } else {
        format!("with it and {} admitted, not running yet", pending.len())
    };

    let floors = floors_held(obs) + starting().map(NewGuest::floor_demand).sum::<Bytes>();
    checks.push(Check {
        name: "floors".into(),
        ok: floors <= capacity,
        need: floors,
        limit: capacity,
        why: format!(
            "floors and overheads {} of {} {with_it}{}",
            floors,
            capacity,
            if floors <= capacity {
                ""
            } else {
                " (the escape would have to move a guest)"
            }
        ),
    });

    let held = targets_need(obs, targets);
    let admitted: Bytes = pending.iter().map(NewGuest::need).sum();
    let working = held + admitted + new.need();
    checks.push(Check {
        name: "working_sets".into(),
        ok: working <= capacity,
        need: working,
        limit: capacity,
        why: format!(
            "the guests' targets {}{} + its need {} = {} of {}",
            held,
            if pending.is_empty() {
                String::new()
            } else {
                format!(" + {} admitted, not running yet, {admitted}", pending.len())
            },
            new.need(),
            working,
            capacity
        ),
    });

    if let Some(r) = max_ratio.filter(|r| r.is_finite() && *r > 0.0) {
        // Whole: overheads, and guests nothing can resize. Promised ÷ R: the rest.
        let (mut whole, mut promised) = (Bytes::ZERO, Bytes::ZERO);
        for g in starting() {
            whole += g.overhead;
            if g.resizable {
                promised += g.memory;
            } else {
                whole += g.memory;
            }
        }
        for vm in &obs.vms {
            whole += vm.overhead;
            if vm.balloon {
                promised += vm.configured;
            } else {
                whole += vm.configured;
            }
        }
        let need = whole + Bytes::from_f64(promised.as_f64() / r);
        checks.push(Check {
            name: "ratio".into(),
            ok: need <= capacity,
            need,
            limit: capacity,
            why: format!(
                "at R = {r}: {} not resizable or overhead + {} promised to resizable guests ÷ {r} = {} of {}",
                whole, promised, need, capacity
            ),
        });
    }

    Admission {
        admit: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Room for one more guest now: the capacity less what the running guests need (their
/// targets or sizes, and overheads; never less than their floors). What a new guest's
/// overhead and need may take without squeezing anyone below its target.
pub fn room(obs: &Observation, targets: &[Option<Bytes>], capacity: Bytes) -> Bytes {
    capacity - targets_need(obs, targets)
}

/// Σ [`needs_now`] over the guests, `targets[i]` for `obs.vms[i]` (missing: none).
fn targets_need(obs: &Observation, targets: &[Option<Bytes>]) -> Bytes {
    obs.vms
        .iter()
        .zip(targets.iter().chain(std::iter::repeat(&None)))
        .map(|(vm, target)| needs_now(vm, *target))
        .sum()
}

/// What a running guest needs now: the policy's target where it has one (never below what
/// no balloon can return), else what it holds; plus its overhead.
fn needs_now(vm: &VmSample, target: Option<Bytes>) -> Bytes {
    let floor = floor_demand(vm);
    match target.filter(|_| vm.balloon) {
        Some(t) => (vm.overhead + t).max(floor),
        None => (vm.overhead + vm.actual).max(floor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::HostSample;

    /// Two running guests of 4 GiB (1 GiB floor, 128 MiB overhead), targets 2 GiB each.
    fn host() -> (Observation, Vec<Option<Bytes>>) {
        let vm = |name: &str| {
            let mut v = VmSample::new(name, Bytes::gib(4), Bytes::gib(3));
            v.min = Some(Bytes::gib(1));
            v.overhead = Bytes::mib(128);
            v
        };
        let obs = Observation {
            time: crate::units::Millis(0),
            host: HostSample {
                total: Bytes::gib(12),
                ..HostSample::default()
            },
            vms: vec![vm("a"), vm("b")],
        };
        (obs, vec![Some(Bytes::gib(2)), Some(Bytes::gib(2))])
    }

    fn guest(memory_gib: u64) -> NewGuest {
        NewGuest {
            memory: Bytes::gib(memory_gib),
            floor: Bytes::gib(1),
            overhead: Bytes::mib(128),
            resizable: true,
            need: None,
        }
    }

    #[test]
    fn a_guest_that_fits_is_admitted_with_the_numbers() {
        let (obs, targets) = host();
        let a = admit(&obs, &targets, Bytes::gib(8), &guest(4), &[], None);
        assert!(a.admit, "{a}");
        assert_eq!(a.checks.len(), 2, "no ratio asked for");
        // Floors: 3 × (1 GiB + 128 MiB).
        assert_eq!(a.checks[0].need, Bytes::mib(3 * 1152));
        // Targets 2 × (2 GiB + 128 MiB), its need its floor + overhead.
        assert_eq!(a.checks[1].need, Bytes::mib(2 * 2176 + 1152));
        assert!(a.to_string().starts_with("admit: floors"), "{a}");
    }

    #[test]
    fn each_check_refuses_on_its_own() {
        let (obs, targets) = host();
        // Working sets: with a need of 3 GiB, 2 × 2176 + 3200 MiB > 7 GiB.
        let mut busy = guest(4);
        busy.need = Some(Bytes::gib(3));
        let a = admit(&obs, &targets, Bytes::gib(7), &busy, &[], None);
        assert!(!a.admit);
        assert!(a.checks[0].ok && !a.checks[1].ok, "{a:?}");
        assert!(
            a.to_string().starts_with("refuse: the guests' targets"),
            "{a}"
        );
        // Floors: a guest nothing can resize holds all its 4 GiB.
        let mut fixed = guest(4);
        fixed.resizable = false;
        let a = admit(&obs, &targets, Bytes::gib(6), &fixed, &[], None);
        assert!(!a.checks[0].ok, "{a:?}");
        assert!(
            a.to_string()
                .contains("the escape would have to move a guest"),
            "{a}"
        );
        // Ratio: 12 GiB promised ÷ 1.5 + 384 MiB of overheads > 8 GiB; ÷ 2 fits.
        let a = admit(&obs, &targets, Bytes::gib(8), &guest(4), &[], Some(1.5));
        assert!(!a.admit && !a.checks[2].ok, "{a:?}");
        assert_eq!(a.checks[2].need, Bytes::gib(8) + Bytes::mib(384));
        let a = admit(&obs, &targets, Bytes::gib(8), &guest(4), &[], Some(2.0));
        assert!(a.admit, "{a}");
    }

    #[test]
    fn guests_nothing_can_resize_are_not_overcommitted() {
        let (mut obs, targets) = host();
        obs.vms[1].balloon = false;
        // b counts whole (4 GiB), whatever its target says; a's 4 and the new 4 count ÷ 2.
        let a = admit(&obs, &targets, Bytes::gib(16), &guest(4), &[], Some(2.0));
        assert_eq!(a.checks[2].need, Bytes::gib(4 + 4) + Bytes::mib(384));
        // In the working sets b counts what it holds (3 GiB), not its target.
        assert_eq!(
            a.checks[1].need,
            Bytes::mib(2176) + Bytes::mib(3072 + 128) + Bytes::mib(1152)
        );
    }

    #[test]
    fn the_room_is_what_a_new_guest_may_take_and_never_negative() {
        let (obs, targets) = host();
        // 8 GiB − 2 × (2 GiB + 128 MiB).
        assert_eq!(
            room(&obs, &targets, Bytes::gib(8)),
            Bytes::mib(8192 - 2 * 2176)
        );
        assert_eq!(room(&obs, &targets, Bytes::gib(4)), Bytes::ZERO);
        // A guest whose need is exactly the room fits (working sets), a MiB more does not.
        let mut g = guest(8);
        g.need = Some(Bytes::mib(8192 - 2 * 2176 - 128));
        assert!(admit(&obs, &targets, Bytes::gib(8), &g, &[], None).checks[1].ok);
        g.need = Some(Bytes::mib(8192 - 2 * 2176 - 127));
        assert!(!admit(&obs, &targets, Bytes::gib(8), &g, &[], None).checks[1].ok);
    }

    /// A guest admitted and not running yet counts as the new one does: the room it was
    /// given is not given twice.
    #[test]
    fn guests_admitted_and_not_yet_running_take_their_room() {
        let (obs, targets) = host();
        let mut g = guest(4);
        g.need = Some(Bytes::gib(2));
        // 2 × 2176 + 2176 = 6528 MiB of 8 GiB: one fits, two (8704) do not.
        assert!(admit(&obs, &targets, Bytes::gib(8), &g, &[], None).admit);
        let a = admit(&obs, &targets, Bytes::gib(8), &g, &[g.clone()], None);
        assert!(!a.admit && !a.checks[1].ok, "{a}");
        assert_eq!(a.checks[1].need, Bytes::mib(4 * 2176));
        assert!(a.to_string().contains("1 admitted, not running yet"), "{a}");
        // The floors and the ratio count it too.
        assert_eq!(a.checks[0].need, Bytes::mib(4 * 1152));
        let a = admit(&obs, &targets, Bytes::gib(100), &g, &[g.clone()], Some(1.0));
        assert_eq!(a.checks[2].need, Bytes::gib(16) + Bytes::mib(4 * 128));
    }

    #[test]
    fn a_need_is_kept_between_the_floor_and_the_memory() {
        let (obs, targets) = host();
        let mut g = guest(2);
        g.need = Some(Bytes::gib(9));
        let a = admit(&obs, &targets, Bytes::gib(100), &g, &[], None);
        assert_eq!(
            a.checks[1].need,
            Bytes::mib(2 * 2176) + Bytes::mib(2048 + 128)
        );
        g.need = Some(Bytes::ZERO);
        let a = admit(&obs, &targets, Bytes::gib(100), &g, &[], None);
        assert_eq!(a.checks[1].need, Bytes::mib(2 * 2176) + Bytes::mib(1152));
    }
}
