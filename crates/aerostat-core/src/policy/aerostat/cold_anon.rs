//! Cold anonymous memory into guest swap: ESX's case for ballooning over host swapping.
//!
//! A guest's statistics say how much it uses, not how much of that is cold, so the policy
//! never pushes a guest below `used` on the guest's word alone (two probes that tried were
//! measured and dropped: their bites landed on hot cache in guests with no cold anon). The
//! host's coldness measurement (`VmSample::coldness`: guest memory nobody touched during a
//! window) is that evidence: what is idle beyond all the free memory and page cache the
//! guest reports is anonymous memory nobody touched — cold anon. With swap in the guest
//! (declared by the operator: balloon statistics carry no swap totals), half of it per
//! window, and never more than leaves a tenth of that swap free, is pushed out in bites: the
//! target goes a bite below what the guest holds resident, and the guest's LRU gives that
//! much up, cold cache first, then its coldest anonymous pages into swap. Pressure, a
//! reclaim efficiency that shows hot pages being scanned, or a squeeze under which `used`
//! stopped falling stops it for COLD_PAUSE.

use crate::observation::VmSample;
use crate::units::{Bytes, Millis};

use super::reading::Reading;
use super::{MIB, MIN_CHANGE, PAGE};

/// Largest bite below what the guest holds resident, per tick: under the guest swap's
/// write bandwidth, so the swap-out itself does not stall the guest.
const COLD_BITE: f64 = 32.0 * MIB;
/// Idle memory beyond free and cache that is not taken for cold anon: the guest kernel's
/// own idle pages, and the error of a measurement over a window.
const COLD_SLACK: f64 = 64.0 * MIB;
/// Share of the measured cold anon pushed out per window: the next window measures again.
const COLD_SHARE: f64 = 0.5;
/// A coldness sample older than this says nothing of now.
const COLD_FRESH: Millis = Millis(120_000);
/// After pressure, a reclaim efficiency that shows hot pages, or a stuck squeeze, no squeeze
/// for this long.
const COLD_PAUSE: Millis = Millis(30 * 60 * 1000);
/// A squeeze under which the guest's `used` has not fallen for this long stops: no swap
/// after all, or nothing cold left in reach — and a guest held with no free memory and
/// nothing to show for it is one noisy allocation away from evicting hot cache
/// (`unseen-6436`).
const COLD_STUCK: Millis = Millis(10_000);
/// A squeeze ends after this long, done or not: the next window measures again.
const COLD_MAX_SQUEEZE: Millis = Millis(120_000);
/// Swap-ins a squeeze may cost before they count as pressure, in its first seconds of
/// swap-out: the guest LRU's first pass. A real kernel (Linux 6.12 with MGLRU, a 1 GiB
/// guest under TCG, 100 MiB rewritten every 2 s next to 300 MiB touched once) cannot tell
/// hot anon from cold until reclaim has aged it once: the first 32 MiB bites swapped 38–54
/// MiB of the hot pages back in over 2 s, and none after (session 18,
/// `tools/squeeze-by-hand.sh`; docs/benchmarks.md, "Real guests"). Stopping on that first
/// pass stopped every squeeze of a real guest at its first bite. Later swap-ins are the
/// squeeze reaching hot anon.
const COLD_FIRST_PASS: f64 = 64.0 * MIB;
const COLD_FIRST_PASS_TIME: Millis = Millis(5_000);
/// How far above what the guest holds a squeeze's balloon stops before its first bite:
/// one 250 MiB inflate to just above `used` made a real guest's kswapd overshoot (100 MiB
/// swapped out, 58 MiB of it hot, back in within 2 s); an inflate to 64 MiB above `used`
/// reclaimed nothing, and 32 MiB bites from there on cost only the LRU's first pass.
const COLD_APPROACH_MARGIN: f64 = 2.0 * COLD_BITE;
/// A balloon within this of the approach point has arrived: the controller does not send a
/// change smaller than its hysteresis (MIN_CHANGE), so an approach target that moves less than
/// that (the guest's `used` fell a few MiB) would be asked for and never sent, and the
/// squeeze would wait at the approach point until it timed out — a real guest's swap-out
/// never began within 240 s (CI, sessions 17 and 22).
const COLD_APPROACH_ARRIVED: f64 = MIN_CHANGE.0 as f64;
/// Guest swap never filled past this share (and at least SWAP_MARGIN_MIN left): a full swap
/// turns the next squeeze into hot-cache eviction, or an OOM kill.
const SWAP_MARGIN_SHARE: f64 = 0.1;
const SWAP_MARGIN_MIN: f64 = 64.0 * MIB;
/// Reclaim efficiency below which a squeeze stops: cold anon and cold cache are reclaimed at
/// nearly every page scanned, hot cache at one in MAX_SCAN_RATIO.
const COLD_MIN_EFFICIENCY: f64 = 0.15;

/// The squeeze's state for one VM.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ColdAnon {
    /// The coldness window the last squeeze was measured from.
    window_at: Millis,
    paused_until: Millis,
    squeeze: Option<Squeeze>,
}

/// One squeeze: from when, the `used` it ends at, the lowest `used` seen so far (when), the
/// guest's swap counters when it began, and when the guest first swapped out under it.
#[derive(Clone, Copy, Debug)]
struct Squeeze {
    since: Millis,
    goal: f64,
    low: f64,
    low_at: Millis,
    swap_in_at_start: u64,
    swap_out_at_start: u64,
    swapping_since: Option<Millis>,
}

impl ColdAnon {
    /// In the first COLD_FIRST_PASS_TIME of a squeeze's swap-out, while the guest has
    /// swapped in no more than COLD_FIRST_PASS since the squeeze began, this tick's
    /// swap-ins (and the major faults they account for, a page each) are the squeeze's
    /// cost, not pressure: `r` reads as if they had not happened. Refaults of page cache
    /// still count. (A low reclaim efficiency in those seconds is excused too, in `bite`.)
    pub(super) fn excuse_first_pass(&mut self, vm: &VmSample, r: &mut Reading, now: Millis) {
        let counter = |b: Option<Bytes>| b.map_or(0, |b| b.0);
        if let Some(sq) = self.squeeze.as_mut()
            && sq.swapping_since.is_none()
            && counter(vm.stats.swap_out) > sq.swap_out_at_start
        {
            sq.swapping_since = Some(now);
        }
        if self.in_first_pass(vm, now) {
            r.refault_pps = (r.refault_pps - r.swap_in_bps / PAGE).max(0.0);
            r.swap_in_bps = 0.0;
        }
    }

    /// Whether a squeeze is in its swap-out's first COLD_FIRST_PASS_TIME, with no more than
    /// COLD_FIRST_PASS swapped in since it began: the guest LRU's first pass, which cannot
    /// tell hot anon from cold until it has aged it once. Its swap-ins, and a low reclaim
    /// efficiency (hot pages scanned and kept), are the pass's cost: on a real guest the
    /// first tick of swap-out read 17–77 % efficiency in six runs and 6 % in one, whose
    /// squeeze then stopped at 45 MiB where the others reached 98–142 (CI, sessions 25–26).
    fn in_first_pass(&self, vm: &VmSample, now: Millis) -> bool {
        let Some(sq) = self.squeeze.as_ref() else {
            return false;
        };
        let swapped_in = vm
            .stats
            .swap_in
            .map_or(0, |b| b.0)
            .saturating_sub(sq.swap_in_at_start);
        sq.swapping_since
            .is_some_and(|t| now.saturating_sub(t) <= COLD_FIRST_PASS_TIME)
            && swapped_in as f64 <= COLD_FIRST_PASS
    }

    /// Whether a squeeze is under way (it began on an earlier tick and has not ended).
    pub(super) fn squeezing(&self) -> bool {
        self.squeeze.is_some()
    }

    /// This tick's squeeze target for a guest whose balloon is at `actual`: a `bite` below
    /// what it holds (`Reading::held`: a bite below what MemFree leaves would reclaim the
    /// bite plus the kernel's reserve) — once the balloon is within COLD_APPROACH_MARGIN of
    /// that; until then, that margin above it.
    pub(super) fn target(r: &Reading, actual: f64, bite: f64) -> f64 {
        let held = r.held();
        if Self::approaching(r, actual) {
            held + COLD_APPROACH_MARGIN
        } else {
            held - bite
        }
    }

    /// Whether the balloon is still on its way down to COLD_APPROACH_MARGIN above what the
    /// guest holds (within COLD_APPROACH_ARRIVED of that point it has arrived).
    fn approaching(r: &Reading, actual: f64) -> bool {
        actual > r.held() + COLD_APPROACH_MARGIN + COLD_APPROACH_ARRIVED
    }

    /// This tick's bite below what the guest holds resident, while a squeeze lasts.
    /// `r`: this tick's reading.
    pub(super) fn bite(
        &mut self,
        vm: &VmSample,
        r: &Reading,
        actual: f64,
        now: Millis,
    ) -> Option<f64> {
        let squeezing = self.squeezing();
        let hot_scanned = squeezing
            && !self.in_first_pass(vm, now)
            && r.efficiency.is_some_and(|e| e < COLD_MIN_EFFICIENCY);
        if r.pressure() || hot_scanned {
            self.stop(now);
            return None;
        }
        // Only into swap the operator declared: its size bounds what can go there (what
        // the guest has in swap is what it swapped out less what it swapped back in).
        // A squeeze whose swap is no longer declared ends (left standing, it would keep the
        // cache probe waiting for ever).
        let Some(swap) = vm.guest_swap.filter(|s| s.0 > 0).map(Bytes::as_f64) else {
            self.squeeze = None;
            return None;
        };
        if now < self.paused_until {
            return None;
        }
        // A squeeze starts from a coldness window not used yet: with none running and no such
        // window (most guests, most ticks) there is nothing to do.
        let window = vm
            .coldness
            .filter(|c| c.at > self.window_at && now.saturating_sub(c.at) <= COLD_FRESH);
        if !squeezing && window.is_none() {
            return None;
        }
        let swapped_out = vm.stats.swap_out.map_or(0, |b| b.0);
        let swapped_in = vm.stats.swap_in.map_or(0, |b| b.0);
        let in_swap = swapped_out.saturating_sub(swapped_in) as f64;
        let swap_room = swap - in_swap - (SWAP_MARGIN_SHARE * swap).max(SWAP_MARGIN_MIN);
        if !squeezing && let Some(c) = window {
            self.window_at = c.at;
            // Idle is free pages the host backs, page cache and cold anon. The backed part
            // of the guest's free memory is what the host backs beyond what the guest
            // holds resident (free pages never touched are not backed, so not idle).
            let free_backed = (c.touched.as_f64() - r.resident).clamp(0.0, r.free);
            // All of the page cache the guest reports, not only the part MemAvailable
            // counts (`r.cache`): the rest is idle too when cold (`unseen-6464`: 10 % of
            // 3.5 GiB of cold cache read as cold anon, and the squeeze took hot pages).
            let cache = vm
                .stats
                .disk_caches
                .map_or(r.cache, |c| c.as_f64().max(r.cache));
            let cold = c.idle.as_f64() - free_backed - cache - COLD_SLACK;
            let budget = (COLD_SHARE * cold).min(swap_room);
            if budget >= COLD_BITE {
                self.squeeze = Some(Squeeze {
                    since: now,
                    goal: r.used - budget,
                    low: r.used,
                    low_at: now,
                    swap_in_at_start: swapped_in,
                    swap_out_at_start: swapped_out,
                    swapping_since: None,
                });
            }
        }
        let sq = self.squeeze.as_mut()?;
        // While the balloon has not come below the approach point, `used` has no reason
        // to fall yet: the squeeze is not stuck. (Not `approaching`: within its slack the
        // bite is asked for, and the controller may hold it — a guest just given memory is
        // not squeezed for 30 s.)
        let approaching = actual > r.held() + COLD_APPROACH_MARGIN;
        if r.used < sq.low - MIB || approaching {
            sq.low = sq.low.min(r.used);
            sq.low_at = now;
        }
        let (goal, stuck) = (sq.goal, now.saturating_sub(sq.low_at) >= COLD_STUCK);
        if r.used <= goal
            || swap_room < COLD_BITE
            || now.saturating_sub(sq.since) >= COLD_MAX_SQUEEZE
        {
            // Done: what was measured cold is in swap (or swap is as full as it may get).
            self.squeeze = None;
            return None;
        }
        if stuck {
            self.stop(now);
            return None;
        }
        Some(COLD_BITE.min(r.used - goal))
    }

    fn stop(&mut self, now: Millis) {
        if self.squeeze.take().is_some() {
            self.paused_until = now + COLD_PAUSE;
        }
    }
}
