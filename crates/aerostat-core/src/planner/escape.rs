//! The memory-pressure escape: which guest to move away when the host can no longer hold the
//! guests' floors, and when.
//!
//! Ballooning cannot go below a guest's floor (operator minimum or pinned memory). When the
//! floors alone no longer fit the host minus its reserve, nothing the balloon policy does can
//! help: one guest has to leave. [`choose_escape`] ranks the guests that can leave by
//! *relief per cost*:
//!
//! - **relief**: the floor demand the host sheds (`overhead + floor`, where the floor already
//!   includes pinned memory — exactly the memory no balloon can ever return), and whether the
//!   remaining floors then fit;
//! - **cost**: the planner's predicted migration time ([`super::migration::choose`], from the
//!   guest's memory, measured dirty rate and non-zero memory) weighted by the guest's priority
//!   (moving a guest costs *that guest* a pause and post-copy faults; the less important guest
//!   should pay it).
//!
//! Order: first the guests whose departure makes the rest fit, then those whose plan lands
//! within budget, then the best relief per cost; ties by name, so the choice is deterministic.
//! When the guests' working sets grow, a departure after which the rest still fit half an hour
//! ahead goes first, within reason ([`trend`]).
//! [`EscapeTimer`] holds the grace period: a shortfall must persist before anything moves.

pub mod trend;

use serde::{Deserialize, Serialize};

use self::trend::OUTLOOK;
use super::migration::{Allowed, MigrationInputs, Plan, choose};
use crate::controller::kept_memory::{beyond_claim, counted};
use crate::observation::{Observation, VmSample};
use crate::units::{Bytes, Millis};

/// Host memory one guest claims that no balloon can return: QEMU's overhead plus the floor
/// (or, for a guest without a balloon, all of its current memory).
pub fn floor_demand(vm: &VmSample) -> Bytes {
    vm.overhead + if vm.balloon { vm.floor() } else { vm.actual }
}

/// Σ [`floor_demand`] over the host's guests, leaving out the ones already on their way out.
pub fn floors_need(obs: &Observation) -> Bytes {
    obs.vms
        .iter()
        .filter(|vm| !vm.migrating)
        .map(floor_demand)
        .sum()
}

/// Σ [`floor_demand`] over every guest still on the host, those on their way out included:
/// they hold their memory here until they have left.
pub fn floors_held(obs: &Observation) -> Bytes {
    obs.vms.iter().map(floor_demand).sum()
}

/// A departure that also covers the outlook may cost up to this many times the cheapest
/// departure that covers this tick's lack: it saves a second departure and the grace period
/// of pressure before it, at least twice the cost.
const AHEAD_WORTH: f64 = 4.0;

/// Whether squeezing stops short of the guests' hot memory: the floors held
/// ([`floors_held`]) exceed `capacity`, so no squeeze can restore the reserve — it would
/// only trade host swap for the guests' own refaults and swap-ins, and the escape moves a
/// guest away — and host swap can hold `excess`, the committed memory above `capacity`.
///
/// All of the swap counts, not only what is free: `excess` counts every guest's whole
/// target, so the guest pages already in host swap are part of it, not an addition
/// (`unabsorbable-surge`: with 7 GiB of guest pages swapped, a 9.4 GiB excess against
/// 8.9 GiB of free swap squeezed the database below its hot cache, and it refaulted after
/// the escape). Pages of the host's own processes in swap are counted too: on a KVM host
/// they are few.
pub fn hot_memory_stays(obs: &Observation, floors: Bytes, capacity: Bytes, excess: Bytes) -> bool {
    floors > capacity && obs.host.swap_total >= excess
}

/// How a migration away from this host would be run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscapeSettings {
    /// Link bandwidth to the peer (or the configured cap), bytes per second.
    pub bandwidth: Bytes,
    pub downtime_limit: Millis,
    pub max_time: Millis,
    /// The peer can be prepared for post-copy.
    pub postcopy: bool,
}

/// One guest that could leave, as ranked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscapeCandidate {
    /// Index into `Observation::vms`.
    pub vm: usize,
    pub name: String,
    /// Floor demand the host sheds when it leaves.
    pub relief: Bytes,
    /// The remaining guests' floors fit once it has left.
    pub fits_after: bool,
    /// They still fit [`OUTLOOK`] ahead, at the growth seen (`fits_after` when no guest
    /// grows, or the floors decide).
    pub fits_ahead: bool,
    /// The dirty rate used for the plan; `None`: not measured (the link rate was assumed).
    pub dirty_rate: Option<Bytes>,
    pub plan: Plan,
    /// The chosen strategy's predicted total time.
    pub predicted_time: Millis,
    /// Relief (GiB) per priority-weighted second of migration: higher is better.
    pub score: f64,
}

/// The escape's choice and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escape {
    /// Floors + overheads of the guests staying, and what the host can give them.
    pub need: Bytes,
    /// `need` [`OUTLOOK`] ahead at the working sets' growth (`need` when no guest grows,
    /// or the floors decide).
    pub need_ahead: Bytes,
    pub capacity: Bytes,
    /// Best first; empty when no guest can leave.
    pub ranking: Vec<EscapeCandidate>,
    pub reason: String,
}

impl Escape {
    pub fn chosen(&self) -> Option<&EscapeCandidate> {
        self.ranking.first()
    }
}

/// The planner's inputs for moving `vm` away: its configured memory, the dirty rate
/// (`None`: assumed equal to the link rate, so an unmeasured guest never looks cheap), the
/// settings' link and limits, and the zero fraction bounded from below by its RSS. Public so
/// that a driver (the simulator) can run the migration it chose with the same inputs and the
/// rate it then really sees.
pub fn escape_inputs(
    vm: &VmSample,
    dirty_rate: Option<Bytes>,
    settings: &EscapeSettings,
) -> MigrationInputs {
    let mut inputs = MigrationInputs::new(
        vm.configured,
        dirty_rate.unwrap_or(settings.bandwidth),
        settings.bandwidth,
        settings.downtime_limit,
        settings.max_time,
    );
    // Pages the host never backed are zero: RSS minus QEMU's own overhead bounds the
    // guest's non-zero memory from above.
    if let Some(rss) = vm.rss
        && vm.configured > Bytes::ZERO
    {
        let guest = (rss - vm.overhead).min(vm.configured);
        inputs.zero_fraction = Some(1.0 - guest.as_f64() / vm.configured.as_f64());
    }
    inputs
}

/// Ranks the guests that could leave. `dirty_rates[i]` is guest `i`'s measured dirty rate
/// (`None`: not measured; the plan then assumes it dirties memory as fast as the link sends —
/// pessimistic on purpose, so an unmeasured guest never looks cheap). `capacity` is host
/// memory minus the reserve. Guests already migrating, that cannot migrate
/// (`VmSample::migratable`), without a plan that completes, or whose memory size is unknown
/// (0) are not candidates.
///
/// `unmet`: the guests' working sets do not fit by this much (`Pressure::WorkingSetsDoNotFit`):
/// a guest's relief is then all the host memory it holds (overhead + `actual`), and the rest
/// fit after it when that covers `unmet`. `None`: the floors decide, as above.
///
/// `growth[i]`: how fast guest `i`'s working set grows, per second ([`trend::Trend`]). With
/// `unmet`, the need is also carried [`OUTLOOK`] ahead at the growth of the guests staying,
/// and among the departures after which the rest fit now, those after which they still fit
/// then come first (a growing guest sheds its growth as it leaves): peers are few, and one
/// spent on this tick's lack alone is gone when the growth brings the next.
pub fn choose_escape(
    obs: &Observation,
    capacity: Bytes,
    dirty_rates: &[Option<Bytes>],
    growth: &[Bytes],
    settings: &EscapeSettings,
    unmet: Option<Bytes>,
) -> Escape {
    let need = match unmet {
        Some(u) => capacity + u,
        None => floors_need(obs),
    };
    // What each guest adds over the outlook (none when the floors decide).
    let ahead = |i: usize| match unmet {
        Some(_) => Bytes::from_f64(
            growth.get(i).copied().unwrap_or(Bytes::ZERO).as_f64() * OUTLOOK.as_secs_f64(),
        ),
        None => Bytes::ZERO,
    };
    let need_ahead = need
        + obs
            .vms
            .iter()
            .enumerate()
            .filter(|(_, vm)| !vm.migrating)
            .map(|(i, _)| ahead(i))
            .sum::<Bytes>();
    let allowed = Allowed {
        postcopy: settings.postcopy,
        auto_converge: true,
    };
    let mut ranking: Vec<EscapeCandidate> = obs
        .vms
        .iter()
        .enumerate()
        .filter(|(_, vm)| !vm.migrating && vm.migratable && vm.configured > Bytes::ZERO)
        .filter_map(|(i, vm)| {
            let dirty_rate = dirty_rates.get(i).copied().flatten();
            let inputs = escape_inputs(vm, dirty_rate, settings);
            let plan = choose(&inputs, allowed);
            let predicted_time = plan.chosen_prediction()?.total_time?;
            // Host facts over the balloon's claim: a guest whose QEMU holds more than its
            // balloon says frees that too when it leaves — as far as the capacity counts it
            // (`kept_memory::counted`: what host swap cannot hold).
            let kept = beyond_claim(vm).map_or(Bytes::ZERO, |k| counted(k, &obs.host));
            let relief = kept
                + match unmet {
                    Some(_) => vm.overhead + vm.actual,
                    None => floor_demand(vm),
                };
            let seconds = predicted_time.as_secs_f64().max(0.001);
            let weight = if vm.priority.is_finite() && vm.priority > 0.0 {
                vm.priority
            } else {
                1.0
            };
            Some(EscapeCandidate {
                vm: i,
                name: vm.name.clone(),
                relief,
                fits_after: need - relief <= capacity,
                fits_ahead: need_ahead - (relief + ahead(i)) <= capacity,
                dirty_rate,
                predicted_time,
                score: relief.as_gib_f64() / (weight * seconds),
                plan,
            })
        })
        .collect();
    // A departure that covers the outlook saves the next one, but not at any price: not
    // when it costs more than AHEAD_WORTH times the cheapest that covers now (a 64 GiB
    // database dirtying 1.5 GiB/s, 9 min of auto-converge, for an app server's 9 s).
    // With no growth seen, the order is the one without an outlook.
    let growing = need_ahead > need;
    let covers_now = |c: &EscapeCandidate| c.fits_after && c.plan.within_budget;
    // Cost: the priority-weighted seconds the move takes (relief does not buy allowance).
    let cost = |c: &EscapeCandidate| {
        let w = obs.vms[c.vm].priority;
        let w = if w.is_finite() && w > 0.0 { w } else { 1.0 };
        w * c.predicted_time.as_secs_f64()
    };
    let cheapest_now = ranking
        .iter()
        .filter(|c| covers_now(c))
        .map(cost)
        .fold(f64::INFINITY, f64::min);
    let worth_it = |c: &EscapeCandidate| {
        growing && covers_now(c) && c.fits_ahead && cost(c) <= AHEAD_WORTH * cheapest_now
    };
    ranking.sort_by(|a, b| {
        worth_it(b)
            .cmp(&worth_it(a))
            .then(b.fits_after.cmp(&a.fits_after))
            .then(b.plan.within_budget.cmp(&a.plan.within_budget))
            .then(b.score.total_cmp(&a.score))
            .then_with(|| a.name.cmp(&b.name))
    });
    let situation = match unmet {
        Some(u) => format!("guests under memory pressure lack {u} the host cannot give"),
        None => format!("floors need {need}, the host gives {capacity}"),
    };
    let reason = describe(&situation, &ranking, obs, growing);
    Escape {
        need,
        need_ahead,
        capacity,
        ranking,
        reason,
    }
}

/// `growing`: the need grows over the outlook, and each candidate says whether the rest
/// still fit then.
fn describe(
    situation: &str,
    ranking: &[EscapeCandidate],
    obs: &Observation,
    growing: bool,
) -> String {
    // Named, so that an operator sees why a guest that would do is not moved.
    let unmovable: Vec<&str> = obs
        .vms
        .iter()
        .filter(|vm| !vm.migratable && !vm.migrating)
        .map(|vm| vm.name.as_str())
        .collect();
    let unmovable = match unmovable.as_slice() {
        [] => String::new(),
        names => format!(" ({} cannot migrate)", names.join(", ")),
    };
    let Some(best) = ranking.first() else {
        return format!(
            "{situation}: no guest can leave (all migrating or unable to, or no plan completes){unmovable}"
        );
    };
    let line = |c: &EscapeCandidate| {
        let strategy = c.plan.chosen.map(|s| s.as_str()).unwrap_or("no strategy");
        format!(
            "{} frees {}{}, {strategy} in ~{} (dirty {}), priority {}, score {:.3}",
            c.name,
            c.relief,
            match (c.fits_after, growing, c.fits_ahead) {
                (false, ..) => " (not enough alone)".to_string(),
                (true, false, _) => " (the rest then fit)".to_string(),
                (true, true, true) => {
                    format!(" (the rest then fit, and {OUTLOOK} ahead at the growth seen)")
                }
                (true, true, false) => {
                    format!(" (the rest then fit, but not {OUTLOOK} ahead at the growth seen)")
                }
            },
            c.predicted_time,
            c.dirty_rate
                .map(|d| format!("{d}/s"))
                .unwrap_or_else(|| "unmeasured, assumed = link".into()),
            obs.vms[c.vm].priority,
            c.score
        )
    };
    let mut s = format!("{situation}: move {}", line(best));
    if let Some(next) = ranking.get(1) {
        s.push_str(&format!("; next best: {}", line(next)));
    }
    s.push_str(&unmovable);
    s
}

/// Why the host cannot hold its guests, as a real controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pressure {
    /// Σ floors + overheads exceed what the host gives guests: no balloon can fix it.
    FloorsDoNotFit { need: Bytes, capacity: Bytes },
    /// The host is paging guest memory back in faster than `limit` per second: the guests'
    /// working sets no longer fit, whatever the floors say.
    HostThrashing {
        swap_in_per_sec: Bytes,
        limit: Bytes,
    },
    /// Guests under memory pressure (swapping, refaulting) asked the policy for `unmet` more
    /// than the host could give, or use that much more than it can hold once each is at its
    /// least ([`crate::policy::Policy::unmet_need`]; the message says "lack" for both):
    /// their working sets
    /// no longer fit, though the floors do and the host keeps its reserve — the guests
    /// thrash in their own swap and page cache instead of the host's.
    WorkingSetsDoNotFit { unmet: Bytes },
}

impl Pressure {
    /// The unmet need of `WorkingSetsDoNotFit`, for [`choose_escape`].
    pub fn unmet(&self) -> Option<Bytes> {
        match self {
            Pressure::WorkingSetsDoNotFit { unmet } => Some(*unmet),
            _ => None,
        }
    }
}

impl std::fmt::Display for Pressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pressure::FloorsDoNotFit { need, capacity } => {
                write!(f, "floors need {need}, the host gives {capacity}")
            }
            Pressure::HostThrashing {
                swap_in_per_sec,
                limit,
            } => write!(
                f,
                "the host swaps guest memory in at {swap_in_per_sec}/s (limit {limit}/s)"
            ),
            Pressure::WorkingSetsDoNotFit { unmet } => write!(
                f,
                "guests under memory pressure lack {unmet} the host cannot give"
            ),
        }
    }
}

/// Turns successive observations into [`Pressure`]: the floors check needs one observation,
/// the swap-in rate two (the host's counter is cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PressureWatch {
    last: Option<(Millis, Bytes)>,
}

/// Unmet need below this is noise (a tick's rounding, one guest's brief refault), not a host
/// that cannot hold its guests.
pub const MIN_UNMET: Bytes = Bytes::mib(64);

impl PressureWatch {
    /// `thrash_limit`: host swap-in rate (bytes/s) that counts as thrashing; `None` watches
    /// the floors only. `unmet`: the policy's [`crate::policy::Policy::unmet_need`] (`None`
    /// for a policy that does not say).
    pub fn observe(
        &mut self,
        obs: &Observation,
        capacity: Bytes,
        thrash_limit: Option<Bytes>,
        unmet: Option<Bytes>,
    ) -> Option<Pressure> {
        let now = (obs.time, obs.host.swap_in);
        let last = self.last.replace(now);
        let need = floors_need(obs);
        if need > capacity {
            return Some(Pressure::FloorsDoNotFit { need, capacity });
        }
        if let Some(unmet) = unmet.filter(|u| *u >= MIN_UNMET) {
            return Some(Pressure::WorkingSetsDoNotFit { unmet });
        }
        let (limit, (t0, in0)) = (thrash_limit?, last?);
        let dt = obs.time.saturating_sub(t0).as_secs_f64();
        // A counter that went backwards (host reboot, sampler restart) says nothing.
        if dt <= 0.0 || obs.host.swap_in < in0 {
            return None;
        }
        let rate = Bytes::from_f64((obs.host.swap_in - in0).as_f64() / dt);
        (rate > limit).then_some(Pressure::HostThrashing {
            swap_in_per_sec: rate,
            limit,
        })
    }
}

/// Holds the grace period: [`EscapeTimer::observe`] says `true` once the floors have not fit
/// for `grace` without a break.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscapeTimer {
    since: Option<Millis>,
}

impl EscapeTimer {
    /// `short`: the floors do not fit at `now`. Returns whether the shortfall has lasted
    /// `grace` (a tick where they fit restarts the wait).
    pub fn observe(&mut self, now: Millis, short: bool, grace: Millis) -> bool {
        if !short {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_sub(since) >= grace
    }

    /// Since when the floors have not fit, if they do not.
    pub fn since(&self) -> Option<Millis> {
        self.since
    }

    /// After an escape was started: wait a full grace period again before the next.
    pub fn reset(&mut self) {
        self.since = None;
    }
}

#[cfg(test)]
mod tests;
