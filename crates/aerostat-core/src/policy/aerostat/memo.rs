//! What the `aerostat` policy remembers about each VM from one tick to the next, and the
//! bookkeeping that keeps it: the growth estimate, the bursts that outran the guest's room,
//! holds below the need, the cold page cache left, the room a killed workload used, balloon
//! stalls.

use crate::decision::Rule;
use crate::observation::VmSample;
use crate::units::Millis;

use super::cold_anon::ColdAnon;
use super::reading::Reading;
use super::wish::Wish;
use super::{
    BURST_HALF_LIFE, KILL_GROWTH_SHARE, MIB, MIN_BAND, MIN_BITE, MIN_CHANGE, PROBE_PAUSE,
    RECLAIM_BITE, RESTART_HOLD, SQUEEZE_EXPLAINS, STALL_AFTER, STALL_BLOCK, STALL_GAP,
    STALL_RATE_BPS, STATS_PERIOD_MAX, STOP_LEVEL_BAND, STOP_LEVEL_HELD, STOP_MIN, STOP_SHARE,
};

/// What the policy remembers about one VM.
#[derive(Clone, Debug, Default)]
pub(super) struct Memo {
    pub(super) last_time: Option<Millis>,
    pub(super) last_counters: Counters,
    pub(super) last_actual: f64,
    pub(super) last_used: f64,
    /// MemTotal in the last reading's stats (`Reading::total`).
    pub(super) last_total: f64,
    /// The last reading's `used` was raised to what the host saw the guest access.
    pub(super) last_raised: bool,
    /// The last reading's stats time (`last_update`) and the `actual` taken for when the
    /// guest took them (`actual_when_stats_taken`).
    pub(super) stats_at: Option<Millis>,
    pub(super) actual_then: f64,
    /// How often the guest's stats arrive: the gap between the last two `last_update`s seen,
    /// at most STATS_PERIOD_MAX (`None` until two were seen).
    pub(super) stats_period: Option<Millis>,
    /// Memory the guest's kernel keeps out of MemTotal (`reading::read`), from the last
    /// reading whose balloon was known exactly.
    pub(super) hidden: f64,
    /// Growth rate of `used`, bytes/s: rises when two readings agree, decays slowly.
    pub(super) growth_bps: f64,
    /// How far the balloon moved between the last two readings (`track_growth`).
    pub(super) last_move: f64,
    /// The rate of `used` seen last tick.
    pub(super) last_rate: f64,
    /// The rate of `used` the last new stats showed (`Reading::new_stats`).
    pub(super) last_new_rate: f64,
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
    /// Stalls in a row, and the `actual` the last one stopped at: each stall at the same
    /// place doubles the next block (a balloon that stalls again where it stalled says the
    /// guest cannot give that memory, whatever its stats claim); an inflation that gets
    /// below that place starts over.
    pub(super) stalls_at: Option<(u32, f64)>,
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
    /// `used` before a service stopped on its own (a sharp fall from a level it held), and
    /// until when that room is kept for its restart.
    pub(super) stop_room: Option<(f64, Millis)>,
    /// The level `used` has held (within STOP_LEVEL_BAND of the guest) and since when.
    pub(super) used_level: Option<(f64, Millis)>,
    /// The squeeze of cold anonymous memory into guest swap.
    pub(super) cold_anon: ColdAnon,
    /// When the balloon was last seen inflating (`Reading::swap_out_bps`).
    pub(super) inflated_at: Option<Millis>,
}

impl Memo {
    /// Updates the growth rate of `used` from reading `r`, `dt` seconds after the last one
    /// (nothing to compare on a first reading).
    pub(super) fn track_growth(&mut self, r: &Reading, vm: &VmSample, actual: f64, dt: f64) {
        // Growth rate of `used`: fast up, slow down (ESX's working-set estimator habit).
        if self.last_time.is_some() {
            let rate = ((r.used - self.last_used) / dt).max(0.0);
            // Stats taken while the balloon moved are noisy (they lag `actual`): then a
            // rise counts only once it is seen twice in a row, so one noisy sample cannot
            // buy an idle guest headroom. With a still balloon it counts at once.
            let step = MIN_CHANGE.as_f64();
            let moved = (actual - self.last_actual).abs();
            let balloon_moved = moved > step;
            // A deflate the two stats straddle (their MemTotal grew by it) while the live
            // `actual` stood still at both ticks: a real Linux guest (6.x) frees a
            // deflate's pages into its per-CPU page lists, which grow up to an eighth of
            // its memory and are not in MemFree, so for seconds after a deflate they read
            // as use (CI, session 23: 64 MiB of a 768 MiB guest's 101 MiB deflate, read as
            // a 64 MiB/s rise, bought the idle guest 318 MiB of headroom). The rise beyond
            // what the lists could hold counts at once; the rest once seen twice. Not with
            // virtio-mem devices: memory a device plugs goes online straight into the free
            // lists, and its MemTotal grows with every plug the workload asked for (a real
            // NUMA guest growing into its plugs was OOM-killed with the rise held back) —
            // beside a balloon that trims, too: its growth still comes mostly as plugs.
            let page_lists = if vm.blocks.is_some() {
                0.0
            } else {
                (r.total - self.last_total).clamp(0.0, vm.configured.as_f64() / 8.0)
            };
            let rise = if balloon_moved {
                // The noise is what the balloon moved while the two stats were taken (this
                // interval's move, or the last one's for stats that lag a tick): a rise
                // beyond that is the workload's, and counts at once. (`unseen-2151`: a
                // burst's first 340 MiB, read just after an 18 MiB cache-probe deflate,
                // counted as nothing; the room stayed one tick of a slower burst and the
                // guest was OOM-killed a tick later.)
                let noise = moved + self.last_move;
                ((rate * dt - noise).max(0.0) / dt).max(rate.min(self.last_rate))
            } else if page_lists > step {
                // Seen twice: in the last new stats too (a guest polled every 2 s repeats
                // its stats on every other tick, which show no rise).
                ((rate * dt - page_lists).max(0.0) / dt).max(rate.min(self.last_new_rate))
            } else {
                rate
            };
            self.last_rate = rate;
            self.last_move = moved;
            if r.new_stats {
                self.last_new_rate = rate;
            }
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

    /// The room above `used` kept for a workload an OOM kill stopped, or for one that
    /// stopped on its own (0 when there is none).
    pub(super) fn room_for_restart(
        &mut self,
        r: &Reading,
        now: Millis,
        actual: f64,
        configured: f64,
    ) -> (f64, Restart) {
        // A service that frees a large part of the guest at once has stopped, and is likely
        // to start again — a deploy, a restart — and to take it back at once: a JVM that
        // pre-touches its heap asks for gigabytes in its first second, more than any burst
        // room, and without guest swap that is an OOM kill (reviewer-4's rolling deploy: 30
        // of 32 restarts killed on a 144 GiB host, 247 kills on 128 GiB). The room is kept
        // for RESTART_HOLD; only the target keeps it, so a short host takes it back first.
        // A service, not a boot or a job's spike: the level it fell from had held for
        // STOP_LEVEL_HELD (kept on every host, boot storms and VDI boots reclaimed less
        // and one stalled 211 s; kept only on roomy hosts, the deploy lost as many).
        //
        // The fall is the guest's own word, before the host's access window raised it
        // (`Unbacked::accessed`), when its word was believed the reading before: that window
        // still holds the stopped service's pages for up to 30 s and lets `used` down in
        // steps, none of them a quarter of the guest, and the first step left the held level
        // — 17 of 32 restarts were OOM-killed again on the 144 GiB host. A guest already
        // caught claiming less than it accessed is not believed to have stopped (a lying
        // tenant kept its room that way, and an honest neighbour stalled for it).
        let said = match r.unbacked.accessed {
            Some((claimed, _)) if !self.last_raised => claimed,
            _ => r.used,
        };
        let held = self
            .used_level
            .is_some_and(|(_, since)| now.saturating_sub(since) >= STOP_LEVEL_HELD);
        if held
            && self.last_time.is_some()
            && r.new_ooms == 0
            && self.last_used - said >= (configured * STOP_SHARE).max(STOP_MIN)
        {
            self.stop_room = Some((self.last_used, now + RESTART_HOLD));
        }
        match self.used_level {
            Some((level, _)) if (r.used - level).abs() <= STOP_LEVEL_BAND * configured => {}
            _ => self.used_level = Some((r.used, now)),
        }
        let stopped = match self.stop_room {
            Some((before, until)) if now < until => (before - r.used).max(0.0),
            _ => 0.0,
        };
        let killed = self.kill_room(r, now, actual, configured);
        if stopped > killed {
            (stopped, Restart::Stopped)
        } else {
            (killed, Restart::Killed)
        }
    }

    /// The room above `used` kept for a workload an OOM kill stopped (0 when there is none).
    fn kill_room(&mut self, r: &Reading, now: Millis, actual: f64, configured: f64) -> f64 {
        // An OOM kill frees the workload's memory, and a restarted workload wants it back
        // at once: a guest that looks idle after a kill is not reclaimed below what it
        // used before it for RESTART_HOLD (`unseen-7372`: 1 GiB guests reclaimed to
        // their floor after a kill, OOM-killed again by every restart, 720 times in 6 h).
        // What it used before is at least the size it was killed at — the kill proves it
        // wanted more — and the restart gets KILL_GROWTH_SHARE of what the balloon holds
        // back on top: the last reading's `used` alone is from before the burst when stats
        // come every 10 s, and held the restart to the size that killed it (`unseen-1110`
        // polled every 10 s: two 1 GiB guests killed 102 times each, the balloon never
        // moved). Only the target keeps the room: `lowest` and the fit's idle floor do
        // not, so a short host takes it first.
        if r.new_ooms > 0 && self.last_time.is_some() {
            let short_of = actual + KILL_GROWTH_SHARE * (configured - actual).max(0.0);
            let before = self
                .last_used
                .max(short_of)
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
        if self
            .stalls_at
            .is_some_and(|(_, at)| actual + STALL_GAP < at)
        {
            self.stalls_at = None;
        }
        if current + STALL_GAP < actual && moved_bps < STALL_RATE_BPS && self.last_time.is_some() {
            let since = *self.stall_since.get_or_insert(now);
            if now.saturating_sub(since) >= STALL_AFTER && now >= self.inflate_blocked_until {
                self.inflate_blocked_until = now + self.stall_block();
                let stalls = self.stalls_at.map_or(0, |(n, _)| n);
                self.stalls_at = Some((stalls.saturating_add(1), actual));
                self.stall_since = None;
                return Some(moved_bps);
            }
        } else {
            self.stall_since = None;
        }
        None
    }

    /// How long inflation stops after this stall: STALL_BLOCK, doubled for each stall in a
    /// row at the same place, at most 16 times (80 min). (Reviewer-4's Windows hosts, whose
    /// driver reported them all free, stalled every 5 min for 16 h: 177 squeezes into their
    /// swap, 344,500 stall-s where MoM's 236,157.)
    pub(super) fn stall_block(&self) -> Millis {
        Millis(STALL_BLOCK.0 << self.stalls_at.map_or(0, |(n, _)| n).min(4))
    }

    /// Remembers this tick's reading, to compare the next one against.
    pub(super) fn remember_reading(
        &mut self,
        now: Millis,
        vm: &VmSample,
        actual: f64,
        r: &Reading,
    ) {
        let stats = &vm.stats;
        if actual + MIB < self.last_actual {
            self.inflated_at = Some(now);
        }
        self.last_time = Some(now);
        self.last_counters = Counters::of(vm);
        self.last_actual = actual;
        self.last_used = r.used;
        self.last_total = r.total;
        self.last_raised = r.unbacked.accessed.is_some();
        if let (Some(new), Some(old)) = (stats.last_update, self.stats_at)
            && new > old
        {
            self.stats_period = Some(new.saturating_sub(old).min(STATS_PERIOD_MAX));
        }
        self.stats_at = stats.last_update;
        self.actual_then = r.actual_then;
        self.hidden = r.hidden;
    }

    /// The `actual` the guest's stats were taken at, as the range it lies in: a guest polled
    /// every second reports stats taken up to a second or two before the live `actual`, and
    /// while the balloon moves they count another balloon than `actual` says. New stats (a
    /// `last_update` not seen at the last reading) were taken since that reading: between
    /// its `actual` and the live one. The same stats again: the `actual` taken for them
    /// then. Stats taken now (or without a time): the live `actual`.
    pub(super) fn actual_when_stats_taken(
        &self,
        now: Millis,
        actual: f64,
        stats_at: Option<Millis>,
    ) -> ActualThen {
        let one = |a: f64, exact: bool| ActualThen {
            low: a,
            high: a,
            exact,
        };
        match stats_at {
            Some(at) if at < now && self.last_time.is_some() => {
                if Some(at) == self.stats_at {
                    one(self.actual_then, false)
                } else {
                    // Exact only for stats taken since the last reading while the balloon
                    // stood still: stats a real QEMU received just before the last tick
                    // (its polling timer is not the daemon's) may be older than a balloon
                    // step that reading already saw.
                    let still = (actual - self.last_actual).abs() < MIB
                        && self.last_time.is_some_and(|t| at >= t);
                    ActualThen {
                        low: actual.min(self.last_actual),
                        high: actual.max(self.last_actual),
                        exact: still,
                    }
                }
            }
            _ => one(actual, true),
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

/// The balloon's `actual` when the guest took its stats (`Memo::actual_when_stats_taken`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct ActualThen {
    pub(super) low: f64,
    pub(super) high: f64,
    /// Known exactly (`low == high`): stats taken now, the first reading, or new stats
    /// while the balloon stood still since the last reading.
    pub(super) exact: bool,
}

/// Why room is kept for a workload's restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Restart {
    /// An OOM kill stopped it.
    #[default]
    Killed,
    /// It freed a large part of the guest at once, from a level it had held.
    Stopped,
}

/// The cumulative guest counters that are compared from one reading to the next.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counters {
    pub(super) swap_in: Option<u64>,
    /// What QEMU has read from the guest's declared swap disk (`VmSample::swap_disk_read`).
    pub(super) swap_disk_read: Option<u64>,
    /// What QEMU has written to it (`VmSample::swap_disk_written`).
    pub(super) swap_disk_written: Option<u64>,
    pub(super) major_faults: Option<u64>,
    pub(super) oom_kills: Option<u64>,
    pub(super) async_scans: Option<u64>,
    pub(super) direct_scans: Option<u64>,
    pub(super) async_reclaims: Option<u64>,
    pub(super) direct_reclaims: Option<u64>,
}

impl Counters {
    pub(super) fn of(vm: &VmSample) -> Counters {
        let s = &vm.stats;
        Counters {
            swap_in: s.swap_in.map(|b| b.0),
            swap_disk_read: vm.swap_disk_read.map(|b| b.0),
            swap_disk_written: vm.swap_disk_written.map(|b| b.0),
            major_faults: s.major_faults,
            oom_kills: s.oom_kills,
            async_scans: s.async_scans,
            direct_scans: s.direct_scans,
            async_reclaims: s.async_reclaims,
            direct_reclaims: s.direct_reclaims,
        }
    }
}
