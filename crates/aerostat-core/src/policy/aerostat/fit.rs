//! The host-short fit: when the guests' wishes do not fit the host, memory is taken where
//! it costs least first — idle headroom, then any headroom, then the cache each guest
//! keeps — from the least important guests first, and never below a wish's `lowest`
//! (what the guest uses plus a sliver of room).

use crate::decision::Rule;
use crate::observation::Observation;
use crate::planner::escape::{floors_held, hot_memory_stays};
use crate::policy::PolicySettings;
use crate::units::Bytes;

use super::wish::Wish;

/// When Σ wishes + overheads exceed host total − reserve (+ KSM savings), lower wishes toward their
/// `lowest`, cheapest first: lowest weight × room, proportionally. Returns the unmet need:
/// what it took from guests under memory pressure (`Rule::DeflatePressure` wishes: memory
/// guests that are already swapping or refaulting asked for and the host could not give),
/// plus what it could not place at all — the excess left once every wish is at its
/// `lowest`, which the reserve guard then takes from what the guests use.
/// `kept`: memory the host holds beyond what balloons claim (`Policy::host_keeps`), not
/// capacity.
pub(super) fn fit_host(
    settings: &PolicySettings,
    obs: &Observation,
    kept: f64,
    wishes: &mut [Wish],
) -> f64 {
    let capacity = (obs.host.capacity(settings.reserve).as_f64() - kept).max(0.0);
    let mut committed: f64 = obs
        .vms
        .iter()
        .map(|v| (v.overhead + v.actual).as_f64())
        .sum();
    // A wish below the guest's floor is lifted to it by the controller's floor guard: it
    // frees nothing below the floor (`lying-balloon`: a 1 GiB floor under a 64 MiB wish made
    // the fit count 960 MiB the guard then took from the other guests' working sets).
    let floor = |w: &Wish| obs.vms[w.vm].floor().as_f64();
    for w in wishes.iter() {
        committed += w.target.max(floor(w)) - obs.vms[w.vm].actual.as_f64();
    }
    let excess = committed - capacity;
    if excess <= 0.0 {
        return 0.0;
    }
    let mut from_pressured = 0.0;
    // Three tiers: idle headroom of guests that are not growing first, then any headroom,
    // then the cache each guest keeps, down to its `lowest`; within a tier, in proportion
    // to room ÷ weight.
    let mut left = excess;
    let mut hot_stays = false;
    for tier in 0..3 {
        let floor_of = |w: &Wish| {
            floor(w).max(match tier {
                0 => w.idle_floor,
                1 => w.resident.max(w.lowest),
                _ => w.lowest,
            })
        };
        let total_room: f64 = wishes
            .iter()
            .map(|w| (w.target - floor_of(w)).max(0.0) / w.weight.max(1e-3))
            .sum();
        if total_room <= 0.0 || left <= 0.0 {
            continue;
        }
        // Hot cache goes only when the guests' resident memory itself does not fit: the
        // headroom others still count on is a plan, not a shortage (`unseen-sliver`: a
        // batch guest's hot cache thrashed for eight fleet mates' 768 MiB of headroom,
        // with 4 GiB of the host free).
        let short = if tier == 2 {
            // Headroom above the floor only: what a floor holds no one can take later.
            let headroom: f64 = wishes
                .iter()
                .map(|w| (w.target.max(floor(w)) - w.resident.max(floor(w))).max(0.0))
                .sum();
            // When even the floors do not fit, taking hot cache cannot make room: it only
            // trades host swap for refaults. While host swap can hold the rest, the hot
            // cache stays.
            if hot_memory_stays(
                obs,
                floors_held(obs),
                Bytes::from_f64(capacity),
                Bytes::from_f64(left),
            ) {
                hot_stays = true;
                0.0
            } else {
                (left - headroom).max(0.0)
            }
        } else {
            left
        };
        if short <= 0.0 {
            continue;
        }
        for w in wishes.iter_mut() {
            let room = (w.target - floor_of(w)).max(0.0);
            if room <= 0.0 {
                continue;
            }
            let take = (short * (room / w.weight.max(1e-3)) / total_room).min(room);
            if take < 1.0 {
                continue;
            }
            w.target -= take;
            left -= take;
            if w.rule == Rule::DeflatePressure {
                from_pressured += take;
            }
            w.rule = Rule::HostShort;
            let (_, taken) = w.host_short.unwrap_or((0.0, 0.0));
            w.host_short = Some((excess, taken + take));
        }
    }
    // What no tier could take, once every wish is at its `lowest` (the tiers share the
    // shortfall in one pass, so room a capped share left counts as placeable): the guests'
    // own memory does not fit, and the guard will squeeze them into their swap (`lying-balloon` with the escape: the guard took 0.4 GiB
    // of two honest guests' working sets every tick for an hour while the policy reported
    // nothing unmet, so the escape never moved the guest whose balloon kept 5.6 GiB). Not
    // when hot memory stays on purpose: the floors do not fit, and that is the escape's
    // other cue.
    let unplaced = if hot_stays {
        0.0
    } else {
        let room: f64 = wishes
            .iter()
            .map(|w| (w.target - w.lowest.max(floor(w))).max(0.0))
            .sum();
        (left - room).max(0.0)
    };
    from_pressured + unplaced
}
