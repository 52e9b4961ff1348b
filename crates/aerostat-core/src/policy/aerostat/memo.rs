//! What the `aerostat` policy remembers about each VM from one tick to the next, and the
//! bookkeeping that keeps it: the growth estimate, the bursts that outran the guest's room,
//! holds below the need, the cold page cache left, the room a killed workload used, balloon
//! stalls.

use crate::decision::Rule;
use crate::observation::GuestStats;
use crate::units::Millis;

use super::cold_anon::ColdAnon;
use super::reading::Reading;
use super::wish::Wish;
use super::{
    BURST_HALF_LIFE, MIB, MIN_BAND, MIN_BITE, PROBE_PAUSE, RECLAIM_BITE, RESTART_HOLD,
    SQUEEZE_EXPLAINS, STALL_AFTER, STALL_BLOCK, STALL_GAP, STALL_RATE_BPS,
};

/// What the policy remembers about one VM.
#[derive(Clone, Debug, Default)]
pub(super) struct Memo {
    pub(super) last_time: Option<Millis>,
    pub(super) last_counters: Counters,
    pub(super) last_actual: f64,
    pub(super) last_used: f64,
    /// The last reading's stats time (`last_update`) and the `actual` taken for when the
    /// guest took them (`actual_when_stats_taken`).
    pub(super) stats_at: Option<Millis>,
    pub(super) actual_then: f64,
    /// Memory the guest's kernel keeps out of MemTotal (`reading::read`), from the last
    /// reading whose balloon was known exactly.
    pub(super) hidden: f64,
    /// Growth rate of `used`, bytes/s: rises when two readings agree, decays slowly.
    pub(super) growth_bps: f64,
    /// The rate of `used` seen last tick.
    pub(super) last_rate: f64,
    /// How much `used` rose over the last interval and the one before (the rises
    /// `growth_bps` took in), for [`Memo::learn_burst`].
    pub(super) rises: [f64; 2],
    /// The largest rise over one interval that the guest made just before it came under
    /// pressure — a burst that outran its room — and when (`burst_room`).
    pub(super) burst_seen: f64,
    pub(super) burst_seen_at: Millis,
    /// A burst learned in the wake of an OOM kill: its room is kept whole on a nearly full
    /// host too (`Room::of`).
    pub(super) burst_killed: bool,
    /// Page cache we let the guest keep; `None` until first seen.
    pub(super) cache_keep: Option<f64>,
    pub(super) probe_paused_until: Millis,
    /// Since when the balloon has lagged its target without moving.
    pub(super) stall_since: Option<Millis>,
    pub(super) inflate_blocked_until: Millis,
    /// The target this policy asked for last tick, and when the guest was last held below
    /// its need — by the host-short fit or by the controller's reserve guard.
    pub(super) last_wish: f64,
    pub(super) squeezed_at: Option<Millis>,
    /// Cold page cache left by the last estimate, less the bites since; `None` until the
    /// guest has reclaimed under a bite, and after pressure (its cache then refills), a
    /// phase change or a probe pause (`track_cold_cache`).
    pub(super) cold_left: Option<f64>,
    /// The page cache of the last reading, and `used` and the time when `cold_left` was
    /// measured.
    pub(super) last_cache: f64,
    pub(super) cold_used: f64,
    pub(super) cold_at: Millis,
    /// When the controller last sent less than a host-short raise this policy asked for
    /// (`last_wish_host_short`): the reserve guard took it back.
    pub(super) raise_cut_at: Option<Millis>,
    pub(super) last_wish_host_short: bool,
    /// What the guest used before its last OOM kill, kept for the workload's restart until
    /// the given time.
    pub(super) restart_room: Option<(f64, Millis)>,
    /// The squeeze of cold anonymous memory into guest swap.
    pub(super) cold_anon: ColdAnon,
}

impl Memo {
    /// Updates the growth rate of `used` from reading `r`, `dt` seconds after the last one
    /// (nothing to compare on a first reading).
    pub(super) fn track_growth(&mut self, r: &Reading, actual: f64, dt: f64) {
        // Growth rate of `used`: fast up, slow down (ESX's working-set estimator habit).
        if self.last_time.is_some() {
            let rate = ((r.used - self.last_used) / dt).max(0.0);
            // Stats taken while the balloon moved are noisy (they lag `actual`): then a
            // rise counts only once it is seen twice in a row, so one noisy sample cannot
            // buy an idle guest headroom. With a still balloon it counts at once.
            let balloon_moved = (actual - self.last_actual).abs() > 16.0 * MIB;
            let rise = if balloon_moved {
                rate.min(self.last_rate)
            } else {
                rate
            };
            self.last_rate = rate;
            self.rises = [rise * dt, self.rises[0]];
            self.growth_bps = if rise > self.growth_bps {
                rise
            } else {
                self.growth_bps * 0.9 + rise * 0.1
            };
        } else {
            // After a gap (no stats, a migration) the rises before it say nothing of now.
            self.rises = [0.0; 2];
        }
    }

    /// Learns the guest's bursts: under pressure right after `used` rose faster than its room
    /// could take, the larger of the last two rises is what a burst of this guest does
    /// before the loop sees it (a job that runs every hour or every night bursts the same
    /// way again).
    pub(super) fn learn_burst(&mut self, r: &Reading, now: Millis) {
        if !r.pressure() {
            return;
        }
        let burst = self.rises[0].max(self.rises[1]);
        if burst > self.burst_room(now) {
            self.burst_seen = burst;
            self.burst_seen_at = now;
        }
        // The kill itself frees the workload (no rise to learn); its restart, climbing back
        // under pressure while the restart room is held, is the burst that killed it.
        let after_kill = r.new_ooms > 0 || self.restart_room.is_some_and(|(_, until)| now < until);
        if after_kill && self.burst_seen > 0.0 {
            self.burst_killed = true;
        }
    }

    /// The room a learned burst keeps: the burst, halving every BURST_HALF_LIFE.
    pub(super) fn burst_room(&self, now: Millis) -> f64 {
        if self.burst_seen <= 0.0 {
            return 0.0;
        }
        let age = now.saturating_sub(self.burst_seen_at).as_secs_f64();
        self.burst_seen * 0.5f64.powf(age / BURST_HALF_LIFE.as_secs_f64())
    }

    /// Notes how the controller's target now (`current`) compares with what this policy
    /// asked for last tick: well below it, the guest is held below its need
    /// (`squeezed_at`); any cut of a host-short raise, the reserve guard took it back
    /// (`raise_cut_at`).
    pub(super) fn note_holds(&mut self, current: f64, now: Millis) {
        if self.last_time.is_some() && current + MIN_BAND < self.last_wish {
            self.squeezed_at = Some(now);
        }
        if self.last_time.is_some() && self.last_wish_host_short && current + MIB < self.last_wish {
            self.raise_cut_at = Some(now);
        }
    }

    /// Whether the guest was held below its need within SQUEEZE_EXPLAINS: then pressure or
    /// a low reclaim efficiency is the hold's doing, not the cache probe's.
    pub(super) fn squeezed(&self, now: Millis) -> bool {
        self.squeezed_at
            .is_some_and(|t| now.saturating_sub(t) <= SQUEEZE_EXPLAINS)
    }

    /// Updates the estimate of the cold page cache left: measured when the guest
    /// reclaimed; otherwise the last estimate plus whatever the cache grew by (new pages
    /// are cold until re-read). A workload that changed phase — its used memory moved by a
    /// quarter (at least 256 MiB) since the estimate — may have left any amount of its
    /// cache cold: unknown again.
    pub(super) fn track_cold_cache(&mut self, r: &Reading, now: Millis) {
        let phase_change =
            (r.used - self.cold_used).abs() > (0.25 * self.cold_used).max(256.0 * MIB);
        // An estimate as old as a probe pause is as stale as the bottom the pause kept.
        let stale = now.saturating_sub(self.cold_at) > PROBE_PAUSE;
        self.cold_left = match (r.cold_cache(), self.cold_left) {
            (Some(cold), _) => {
                self.cold_used = r.used;
                self.cold_at = now;
                Some(cold)
            }
            (None, Some(_)) if phase_change || stale => None,
            // Cache dropped without a scan (a deleted file) leaves no more cold than cache.
            (None, Some(cold)) => Some((cold + (r.cache - self.last_cache).max(0.0)).min(r.cache)),
            (None, None) => None,
        };
        self.last_cache = r.cache;
    }

    /// The room above `used` kept for a workload an OOM kill stopped (0 when there is none).
    pub(super) fn room_for_restart(&mut self, r: &Reading, now: Millis) -> f64 {
        // An OOM kill frees the workload's memory, and a restarted workload wants it back
        // at once: a guest that looks idle after a kill is not reclaimed below what it
        // used before it for RESTART_HOLD (`unseen-7372`: 1 GiB guests reclaimed to
        // their floor after a kill, OOM-killed again by every restart, 720 times in 6 h).
        // Only the target keeps the room: `lowest` and the fit's idle floor do not, so a
        // short host takes it first.
        if r.new_ooms > 0 && self.last_time.is_some() {
            let before = self
                .last_used
                .max(self.restart_room.map_or(0.0, |(u, _)| u));
            self.restart_room = Some((before, now + RESTART_HOLD));
        }
        match self.restart_room {
            Some((before, until)) if now < until => (before - r.used).max(0.0),
            _ => 0.0,
        }
    }

    /// How much page cache the next shrink may take. Unknown: a small bite, whose reading
    /// tells the rest — a first bite that lands on hot cache is a refault the baselines may
    /// not cause (`unseen-5354`: 1 GiB guests whose cache was 90 % hot lost up to 41 MiB of
    /// it to one 49 MiB bite, 0.22 stall-s against 0; `unseen-2254`: eleven idle 2 GiB
    /// guests on a host 18 % available, where the headroom is only a sliver, lost hot cache
    /// to 64 MiB first bites after every pause, 5.4 stall-s against 0). Then half the cold
    /// cache left, so a bite cannot land on hot pages before the next reading shows where
    /// the bottom is — the probe closes in geometrically. Less than two small bites left:
    /// none (free memory still goes).
    pub(super) fn cache_bite(&self) -> f64 {
        match self.cold_left {
            None => MIN_BITE,
            Some(c) if c < 2.0 * MIN_BITE => 0.0,
            Some(c) => (0.5 * c).clamp(MIN_BITE, RECLAIM_BITE),
        }
    }

    /// Counts `taken` bytes of cache asked of the guest against the cold cache left.
    pub(super) fn spend_cold_cache(&mut self, taken: f64) {
        if let Some(c) = &mut self.cold_left {
            *c = (*c - taken).max(0.0);
        }
    }

    /// Whether the balloon has stalled long enough to give up on the target (`current`):
    /// then blocks inflation for STALL_BLOCK and returns how fast `actual` moved (bytes/s).
    pub(super) fn balloon_stalled(
        &mut self,
        current: f64,
        actual: f64,
        dt: f64,
        now: Millis,
    ) -> Option<f64> {
        // Balloon stall: the target is well below actual and actual is not moving.
        let moved_bps = (self.last_actual - actual).max(0.0) / dt;
        if current + STALL_GAP < actual && moved_bps < STALL_RATE_BPS && self.last_time.is_some() {
            let since = *self.stall_since.get_or_insert(now);
            if now.saturating_sub(since) >= STALL_AFTER && now >= self.inflate_blocked_until {
                self.inflate_blocked_until = now + STALL_BLOCK;
                self.stall_since = None;
                return Some(moved_bps);
            }
        } else {
            self.stall_since = None;
        }
        None
    }

    /// Remembers this tick's reading, to compare the next one against.
    pub(super) fn remember_reading(
        &mut self,
        now: Millis,
        stats: &GuestStats,
        actual: f64,
        r: &Reading,
    ) {
        self.last_time = Some(now);
        self.last_counters = Counters::of(stats);
        self.last_actual = actual;
        self.last_used = r.used;
        self.stats_at = stats.last_update;
        self.actual_then = r.actual_then;
        self.hidden = r.hidden;
    }

    /// The `actual` the guest's stats were taken at, or more (less balloon): a guest polled
    /// every second reports stats taken up to a second or two before the live `actual`,
    /// and while the balloon inflates they count less of it than `actual` says. New stats
    /// (a `last_update` not seen at the last reading) were taken since that reading: the
    /// larger of its `actual` and the live one. The same stats again: the same `actual`
    /// as then. Stats taken now (or without a time): the live `actual`.
    ///
    /// The `bool` says whether that `actual` is exact rather than an upper bound: stats
    /// taken now, the first reading, or new stats while the balloon stood still since the
    /// last reading.
    pub(super) fn actual_when_stats_taken(
        &self,
        now: Millis,
        actual: f64,
        stats_at: Option<Millis>,
    ) -> (f64, bool) {
        match stats_at {
            Some(at) if at < now && self.last_time.is_some() => {
                if Some(at) == self.stats_at {
                    (self.actual_then, false)
                } else {
                    let still = (actual - self.last_actual).abs() < MIB;
                    (actual.max(self.last_actual), still)
                }
            }
            _ => (actual, true),
        }
    }

    /// Remembers the target asked for after the fit (`current` is the controller's target
    /// now), and notes a hold when the fit took more than idle headroom.
    pub(super) fn remember_wish(&mut self, w: &Wish, current: f64, now: Millis) {
        self.last_wish = w.target;
        self.last_wish_host_short = w.rule == Rule::HostShort && w.target > current;
        // A take from idle headroom alone (within the band) is not a hold.
        if w.host_short.is_some_and(|(_, taken)| taken > MIN_BAND) {
            self.squeezed_at = Some(now);
        }
    }
}

/// The cumulative guest counters that are compared from one reading to the next.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counters {
    pub(super) swap_in: Option<u64>,
    pub(super) major_faults: Option<u64>,
    pub(super) oom_kills: Option<u64>,
    pub(super) async_scans: Option<u64>,
    pub(super) direct_scans: Option<u64>,
    pub(super) async_reclaims: Option<u64>,
    pub(super) direct_reclaims: Option<u64>,
}

impl Counters {
    pub(super) fn of(s: &GuestStats) -> Counters {
        Counters {
            swap_in: s.swap_in.map(|b| b.0),
            major_faults: s.major_faults,
            oom_kills: s.oom_kills,
            async_scans: s.async_scans,
            direct_scans: s.direct_scans,
            async_reclaims: s.async_reclaims,
            direct_reclaims: s.direct_reclaims,
        }
    }
}
