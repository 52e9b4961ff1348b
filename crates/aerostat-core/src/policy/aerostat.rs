//! `aerostat`: the default policy. Reclaim what each guest does not use, give it back
//! before the guest feels the lack, and keep the host out of swap.
//!
//! Per VM, each tick (see `docs/policy.md` for the full story):
//! - **need** = `used` (guest MemTotal − MemAvailable, i.e. memory it cannot drop without
//!   swapping) + `cache_keep` (the page cache we let it keep) + `headroom` (room to grow
//!   until the next tick: a class minimum, or the recent growth rate × reaction time).
//! - `cache_keep` starts at the whole cache and is *probed* down slowly. The guest's LRU
//!   gives up cold cache first; its reclaim efficiency (pages reclaimed ÷ pages scanned,
//!   Linux ≥ 6.12 stats) estimates the cold cache left, and each bite takes at most half
//!   of it, so the probe closes in on the hot pages without landing on them. It stops
//!   when the estimate, or the efficiency itself, says only hot pages are left, or when
//!   refaults (major faults) appear, and resumes later.
//! - **pressure** (guest swap-ins, refaults, OOM kills): deflate at once by a boost and
//!   stop probing for a while.
//! - **stalled balloon** (target far below `actual` and not moving): stop pushing, give a
//!   little back, block inflation for a while (ChromeOS concierge's rule).
//! - targets move only when they leave a band around the need (fewer actions).
//!
//! Host-wide: when Σ need + overheads exceeds host total − reserve, memory is taken where
//! it costs least first — headroom, then the cache allowance, from the least important
//! guests first (an idle-memory-tax flavour of ESX's shares) — and never below `used`.
//!
//! Trust: guest numbers are clamped to [0, configured] and only ever *raise* a guest's
//! own target or order who is asked first; taking memory from others is bounded by the
//! controller's guards (floors, steps, reserve), which use host facts only.

use std::fmt::Write as _;

use crate::controller::GuardConfig;
use crate::decision::Rule;
use crate::observation::{GuestStats, Observation, VmClass, VmSample};
use crate::per_vm::PerVm;
use crate::planner::escape::{floors_held, hot_memory_stays};
use crate::policy::{Policy, PolicySettings, Proposal, Reason, WorkingSet};
use crate::units::{Bytes, Millis};

const MIB: f64 = 1048576.0;
const PAGE: f64 = 4096.0;

/// Stats older than this many intervals are ignored (the guest stopped reporting).
const STALE_INTERVALS: u64 = 5;
/// A guest swapping in faster than this is under pressure.
const SWAP_IN_PRESSURE_BPS: f64 = 1.0 * MIB;
/// A guest major-faulting faster than this (pages/s) is refaulting its working set.
const REFAULT_PRESSURE_PPS: f64 = 256.0;
/// Reclaim efficiency below which the guest's LRU has only hot pages left: it scans ten
/// hot pages for every cold one it frees. A last resort: the probe's bites shrink to half
/// the cold cache it estimates is left and stop short of the bottom (`Memo::cache_bite`).
/// (With full 64 MiB bites the stop had to be 40 %: at 35 % a bite with less cold cache
/// left than its size reached hot pages on steady guests. With halving bites, 8 % stalled
/// a bursty guest in `unseen-mix`. docs/benchmarks.md has the runs.)
const MIN_RECLAIM_EFFICIENCY: f64 = 0.09;
/// ... and on a roomy host (≥ ROOMY_SHARE available): there the memory is not needed, so the
/// probe does not hunt for the last cold pages among hot ones — each bite that lands on hot
/// cache is a refault no baseline would cause (MoM and Proxmox do not balloon there).
const ROOMY_MIN_RECLAIM_EFFICIENCY: f64 = 0.30;
/// How long probing pauses after it found the bottom or caused pressure.
const PROBE_PAUSE: Millis = Millis(30 * 60 * 1000);
/// Pressure or a low reclaim efficiency this soon after the guest was held below its
/// need (by the host-short fit or the controller's reserve guard) is the hold's doing,
/// not a sign the cache probe went too far.
const SQUEEZE_EXPLAINS: Millis = Millis(120_000);
/// Balloon stall: target this far below `actual` ...
const STALL_GAP: f64 = 64.0 * MIB;
/// ... while `actual` moved slower than this (ChromeOS: 15 MB/s) ...
const STALL_RATE_BPS: f64 = 15e6;
/// ... for this long (ChromeOS ignores the first 4 s).
const STALL_AFTER: Millis = Millis(6_000);
/// After a stall, give this much back and block inflation this long.
const STALL_GIVEBACK: f64 = 128.0 * MIB;
const STALL_BLOCK: Millis = Millis(5 * 60 * 1000);
/// Smallest cache bite: above the guards' 16 MiB dead band, so it is sent and the guest's
/// scan counters show where it is.
const MIN_BITE: f64 = 24.0 * MIB;
/// Smallest band above need before a guest is shrunk.
const MIN_BAND: f64 = 32.0 * MIB;
/// Free memory a guest that is not growing keeps when the host takes its idle headroom:
/// room for the next few seconds of noise until the policy sees it grow.
const IDLE_SLIVER: f64 = 64.0 * MIB;
/// How long a host-short raise the reserve guard took back is capped (`Memo::raise_cut_at`).
const RAISE_CUT_HOLD: Millis = Millis(30_000);
/// Largest reclaim of non-free memory (page cache) per tick.
const RECLAIM_BITE: f64 = 64.0 * MIB;
/// How long the room a workload held before an OOM kill is kept for its restart.
const RESTART_HOLD: Millis = Millis(10 * 60 * 1000);
/// How fast an application in a guest of up to SMALL_GUEST can fault in new memory (page
/// faults and zeroing): a burst's worst case between two readings.
const FAST_ALLOC_BPS: f64 = 512.0 * MIB;
/// Larger guests allocate faster in proportion to their size, up to MAX_ALLOC_SCALE times:
/// see [`allocator_scale`].
const SMALL_GUEST: f64 = 4096.0 * MIB;
const MAX_ALLOC_SCALE: f64 = 2.0;
/// A batch guest smaller than SMALL_GUEST keeps at least this share of the batch minimum
/// headroom: see [`headroom_min`].
const MIN_BATCH_START_SCALE: f64 = 0.5;
/// Host memory available, as a share of host memory, from which a host is roomy: MoM starts
/// shrinking guests below 20 % free, and Proxmox fills a host to 80 %.
const ROOMY_SHARE: f64 = 0.20;
/// Host memory available, as a share, below which a class's headroom starts to shrink — to
/// the sliver and the growth part at ROOMY_SHARE, where the baselines start squeezing. A
/// host whose guests follow their need settles where their headroom stops shrinking, so
/// aerostat's host settles just above the baselines' instead of below it
/// (`overcommitted`: shrinking between 20 % and 10 % settled it at 18 % available, 2.8 % of
/// the oracle short of Proxmox's 80 % fill).
const FULL_HEADROOM_SHARE: f64 = 0.30;
/// ... and, for a guest whose cache probe cannot see the hot pages (no scan statistics), the
/// share at which only the sliver is left: its headroom shrinks only below ROOMY_SHARE.
const TIGHT_SHARE: f64 = 0.10;
/// The burst room is half at ROOMY_SHARE, whole this share of the host above it, none this
/// share below it: wide enough that the guests' burst room cannot carry the host back and
/// forth across it (the band is a tenth of the host), centred where the baselines stop
/// leaving guests alone.
const BURST_ROOM_RAMP: f64 = 0.05;

/// What each class of VM gets: headroom, probe speed, and how much of its cache is sacred.
#[derive(Clone, Copy, Debug)]
struct Profile {
    /// Minimum headroom as a fraction of configured memory ...
    headroom_frac: f64,
    /// ... and in bytes.
    headroom_min: f64,
    /// Cache probe speed, fraction of configured memory per minute.
    probe_per_min: f64,
    /// Fraction of the page cache never probed away.
    cache_floor_frac: f64,
    /// Weight in the host-short order: higher gives memory later.
    weight: f64,
}

fn profile(class: VmClass) -> Profile {
    match class {
        VmClass::General => Profile {
            headroom_frac: 0.04,
            headroom_min: 128.0 * MIB,
            probe_per_min: 0.02,
            cache_floor_frac: 0.0,
            weight: 1.0,
        },
        VmClass::Stateless => Profile {
            headroom_frac: 0.03,
            headroom_min: 128.0 * MIB,
            probe_per_min: 0.03,
            cache_floor_frac: 0.0,
            weight: 0.8,
        },
        VmClass::Database => Profile {
            headroom_frac: 0.08,
            headroom_min: 256.0 * MIB,
            probe_per_min: 0.01,
            cache_floor_frac: 0.5,
            weight: 2.0,
        },
        // Batch jobs start by allocating at full speed, and a 1 s loop sees a job start only
        // after its first second: keep that second of a fast allocator (512 MiB) plus the page
        // cache a new job reads free, so a job start is not met by evicting the hot cache.
        VmClass::Batch => Profile {
            headroom_frac: 0.03,
            headroom_min: 768.0 * MIB,
            probe_per_min: 0.03,
            cache_floor_frac: 0.0,
            weight: 0.5,
        },
        VmClass::Interactive => Profile {
            headroom_frac: 0.06,
            headroom_min: 192.0 * MIB,
            probe_per_min: 0.01,
            cache_floor_frac: 0.25,
            weight: 1.5,
        },
    }
}

/// What the policy remembers about one VM.
#[derive(Clone, Debug, Default)]
struct Memo {
    last_time: Option<Millis>,
    last_counters: Counters,
    last_actual: f64,
    last_used: f64,
    /// Growth rate of `used`, bytes/s: rises when two readings agree, decays slowly.
    growth_bps: f64,
    /// The rate of `used` seen last tick.
    last_rate: f64,
    /// Page cache we let the guest keep; `None` until first seen.
    cache_keep: Option<f64>,
    probe_paused_until: Millis,
    /// Since when the balloon has lagged its target without moving.
    stall_since: Option<Millis>,
    inflate_blocked_until: Millis,
    /// The target this policy asked for last tick, and when the guest was last held below
    /// its need — by the host-short fit or by the controller's reserve guard.
    last_wish: f64,
    squeezed_at: Option<Millis>,
    /// Cold page cache left by the last estimate, less the bites since; `None` until the
    /// guest has reclaimed under a bite, and after pressure (its cache then refills), a
    /// phase change or a probe pause (`track_cold_cache`).
    cold_left: Option<f64>,
    /// The page cache of the last reading, and `used` and the time when `cold_left` was
    /// measured.
    last_cache: f64,
    cold_used: f64,
    cold_at: Millis,
    /// When the controller last sent less than a host-short raise this policy asked for
    /// (`last_wish_host_short`): the reserve guard took it back.
    raise_cut_at: Option<Millis>,
    last_wish_host_short: bool,
    /// What the guest used before its last OOM kill, kept for the workload's restart until
    /// the given time.
    restart_room: Option<(f64, Millis)>,
}

impl Memo {
    /// Updates the estimate of the cold page cache left: measured when the guest
    /// reclaimed; otherwise the last estimate plus whatever the cache grew by (new pages
    /// are cold until re-read). A workload that changed phase — its used memory moved by a
    /// quarter (at least 256 MiB) since the estimate — may have left any amount of its
    /// cache cold: unknown again.
    fn track_cold_cache(&mut self, r: &Reading, now: Millis) {
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

    /// How much page cache the next shrink may take. Unknown: a small bite, whose reading
    /// tells the rest — a first bite that lands on hot cache is a refault the baselines may
    /// not cause (`unseen-5354`: 1 GiB guests whose cache was 90 % hot lost up to 41 MiB of
    /// it to one 49 MiB bite, 0.22 stall-s against 0; `unseen-2254`: eleven idle 2 GiB
    /// guests on a host 18 % available, where the headroom is only a sliver, lost hot cache
    /// to 64 MiB first bites after every pause, 5.4 stall-s against 0). Then half the cold
    /// cache left, so a bite cannot land on hot pages before the next reading shows where
    /// the bottom is — the probe closes in geometrically. Less than two small bites left:
    /// none (free memory still goes).
    fn cache_bite(&self) -> f64 {
        match self.cold_left {
            None => MIN_BITE,
            Some(c) if c < 2.0 * MIN_BITE => 0.0,
            Some(c) => (0.5 * c).clamp(MIN_BITE, RECLAIM_BITE),
        }
    }

    /// Counts `taken` bytes of cache asked of the guest against the cold cache left.
    fn spend_cold_cache(&mut self, taken: f64) {
        if let Some(c) = &mut self.cold_left {
            *c = (*c - taken).max(0.0);
        }
    }
}

/// The cumulative guest counters that are compared from one reading to the next.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    swap_in: Option<u64>,
    major_faults: Option<u64>,
    oom_kills: Option<u64>,
    async_scans: Option<u64>,
    direct_scans: Option<u64>,
    async_reclaims: Option<u64>,
    direct_reclaims: Option<u64>,
}

impl Counters {
    fn of(s: &GuestStats) -> Counters {
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

/// The `aerostat` policy.
#[derive(Debug)]
pub struct AerostatPolicy {
    settings: PolicySettings,
    /// Per VM of the last observation, in its order.
    memos: PerVm<Memo>,
    /// The last tick's wishes, in VM order: [`Policy::explain`] writes reasons from them.
    wishes: Vec<Wish>,
}

/// Guest numbers after clamping, and what changed since the last tick.
#[derive(Debug, Default, Clone, Copy)]
struct Reading {
    used: f64,
    free: f64,
    cache: f64,
    swap_in_bps: f64,
    refault_pps: f64,
    new_ooms: u64,
    /// Reclaimed ÷ scanned over the last interval, when the guest reclaimed anything.
    efficiency: Option<f64>,
    /// Bytes the guest's LRU reclaimed over the last interval.
    reclaimed: f64,
    has_scan_stats: bool,
}

impl Reading {
    /// Cold page cache left, estimated from the last interval's reclaim efficiency. A CLOCK
    /// scan passes over hot pages and frees cold ones, so the share of scanned pages it
    /// freed is the cold share of the cache when the interval began; what it freed since
    /// is gone.
    fn cold_cache(&self) -> Option<f64> {
        let e = self.efficiency?;
        Some((e * (self.cache + self.reclaimed) - self.reclaimed).clamp(0.0, self.cache))
    }
}

impl AerostatPolicy {
    pub fn new(settings: PolicySettings) -> AerostatPolicy {
        AerostatPolicy {
            settings,
            memos: PerVm::new(),
            wishes: Vec::new(),
        }
    }

    /// Reads the guest's stats; `dt` is the time since the last reading (`memo.last_time`).
    fn read(vm: &VmSample, memo: &Memo, now: Millis, dt: f64, interval: Millis) -> Option<Reading> {
        let s = &vm.stats;
        let interval_ok =
            |t: Millis| now.saturating_sub(t).0 <= STALE_INTERVALS * interval.0.max(1000);
        if s.last_update.is_some_and(|t| !interval_ok(t)) {
            return None;
        }
        let configured = vm.configured.as_f64();
        let clamp = |b: Option<Bytes>| b.map(|b| b.as_f64().clamp(0.0, configured));
        let total = clamp(s.total).unwrap_or(vm.actual.as_f64());
        let available = clamp(s.available).or_else(|| {
            // Older guests: free + caches approximates MemAvailable.
            Some(clamp(s.free)? + clamp(s.disk_caches).unwrap_or(0.0))
        })?;
        let available = available.min(total);
        // With deflate-on-oom MemTotal stays at the configured size and the balloon's pages
        // count as used inside the guest; without it MemTotal shrinks with the balloon. Stats
        // lag the live `actual` while a balloon moves, so only a MemTotal at the configured
        // size is read as "balloon inside".
        let balloon_inside = if total >= 0.99 * configured {
            (total - vm.actual.as_f64()).max(0.0)
        } else {
            0.0
        };
        let used = (total - available - balloon_inside).max(0.0);
        let free = clamp(s.free).unwrap_or(0.0).min(total);
        // The page cache counted is the part MemAvailable counts: `used` already holds the
        // rest (shmem, the kernel's low-watermark share), and counting it again in the cache
        // a guest keeps left each guest that much above its need (10 % of the cache in the
        // simulator; `overcommitted`: 36–41 MiB a guest).
        let cache = clamp(s.disk_caches)
            .unwrap_or(0.0)
            .min(total)
            .min((available - free).max(0.0));
        let mut r = Reading {
            used,
            free,
            cache,
            has_scan_stats: s.async_scans.is_some(),
            ..Reading::default()
        };
        if memo.last_time.is_some() {
            let p = &memo.last_counters;
            let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
                // Counters that go backwards (guest reboot, lies) count as zero.
                (Some(a), Some(b)) => a.saturating_sub(b) as f64,
                _ => 0.0,
            };
            r.swap_in_bps = delta(s.swap_in.map(|b| b.0), p.swap_in) / dt;
            r.refault_pps = delta(s.major_faults, p.major_faults) / dt;
            r.new_ooms = delta(s.oom_kills, p.oom_kills) as u64;
            let scans = delta(s.async_scans, p.async_scans) + delta(s.direct_scans, p.direct_scans);
            let reclaims = delta(s.async_reclaims, p.async_reclaims)
                + delta(s.direct_reclaims, p.direct_reclaims);
            if scans >= 64.0 {
                r.efficiency = Some((reclaims / scans).min(1.0));
                r.reclaimed = reclaims * PAGE;
            }
        }
        Some(r)
    }
}

impl Policy for AerostatPolicy {
    fn name(&self) -> &'static str {
        "aerostat"
    }

    fn guards(&self) -> GuardConfig {
        GuardConfig {
            reserve: Some(self.settings.reserve),
            max_inflate_step: Some(Bytes::mib(512)),
            max_deflate_step: Some(Bytes::gib(4)),
            min_change: Bytes::mib(16),
            inflate_hold: Millis::secs(30),
            stall_block: STALL_BLOCK,
        }
    }

    fn propose_into(&mut self, obs: &Observation, targets: &[Bytes], out: &mut Vec<Proposal>) {
        let now = obs.time;
        let interval_s = self.settings.interval.as_secs_f64().max(0.1);
        self.memos.sync(&obs.vms, |_| Memo::default());
        let available_share = Self::available_share(obs);
        let headroom_scale = ramp(available_share, ROOMY_SHARE, FULL_HEADROOM_SHARE);
        let blind_probe_headroom_scale = ramp(available_share, TIGHT_SHARE, ROOMY_SHARE);
        // At least ROOMY_SHARE of the host available: MoM and Proxmox leave such a host's
        // guests alone.
        let roomy = available_share >= ROOMY_SHARE;
        let stop_efficiency = if roomy {
            ROOMY_MIN_RECLAIM_EFFICIENCY
        } else {
            MIN_RECLAIM_EFFICIENCY
        };
        // On a roomy host a guest keeps room for the part of a burst the loop cannot see
        // yet: half an interval of a fast allocator, on average — this for a guest of up to
        // SMALL_GUEST, more in bigger ones (`allocator_scale`). A burst that meets no free
        // memory there evicts hot cache — a stall no baseline has — or, without swap,
        // OOM-kills.
        // It shrinks on a nearly full host, continuously (BURST_ROOM_RAMP): a burst room that
        // appeared whole at one share of the host available took the host back below it,
        // and the guests cycled between two targets every band's worth of ticks under
        // constant input.
        let burst_room_scale = ramp(
            available_share,
            ROOMY_SHARE - BURST_ROOM_RAMP,
            ROOMY_SHARE + BURST_ROOM_RAMP,
        );
        let small_guest_burst_room = 0.5 * interval_s * FAST_ALLOC_BPS * burst_room_scale;

        // Per-VM wishes: (index, need, lowest acceptable under host pressure, rule, reason).
        let wishes = &mut self.wishes;
        wishes.clear();
        for (i, vm) in obs.vms.iter().enumerate() {
            if !vm.balloon || vm.migrating {
                // Start afresh afterwards: rates over a migration mean nothing.
                self.memos[i].last_time = None;
                continue;
            }
            let memo = &mut self.memos[i];
            let prof = profile(vm.class);
            let configured = vm.configured.as_f64();
            let actual = vm.actual.as_f64();
            // Seconds since the last reading (at least 1 ms; 1 ms when there was none).
            let dt = now
                .saturating_sub(memo.last_time.unwrap_or(now))
                .as_secs_f64()
                .max(1e-3);
            let Some(r) = Self::read(vm, memo, now, dt, self.settings.interval) else {
                // Blind: no (fresh) stats. Hold the VM where it is; host pressure is
                // handled by the guards from host facts alone.
                memo.last_time = None;
                continue;
            };

            // Growth rate of `used`: fast up, slow down (ESX's working-set estimator habit).
            if memo.last_time.is_some() {
                let rate = ((r.used - memo.last_used) / dt).max(0.0);
                // Stats taken while the balloon moved are noisy (they lag `actual`): then a
                // rise counts only once it is seen twice in a row, so one noisy sample cannot
                // buy an idle guest headroom. With a still balloon it counts at once.
                let balloon_moved = (actual - memo.last_actual).abs() > 16.0 * MIB;
                let rise = if balloon_moved {
                    rate.min(memo.last_rate)
                } else {
                    rate
                };
                memo.last_rate = rate;
                memo.growth_bps = if rise > memo.growth_bps {
                    rise
                } else {
                    memo.growth_bps * 0.9 + rise * 0.1
                };
            }
            let reaction_s = 3.0 * interval_s + 2.0;
            // Pinned memory (huge pages, VFIO) is neither grown into nor ballooned: the
            // class fraction applies to the part of the guest that can move.
            let movable = (configured - vm.pinned.as_f64()).max(0.0);
            let headroom_min = headroom_min(vm.class, &prof, configured);
            let class_headroom = (prof.headroom_frac * movable).max(headroom_min);
            // On a nearly full host the class's room for surprises shrinks toward a sliver:
            // the host could not give a surprise much anyway, and the memory is worth more
            // handed back. Room for growth that is seen stays whole. A guest without scan
            // statistics keeps it whole until the host is no longer roomy: its cache probe
            // finds the hot pages only by refaulting them, and the headroom is what stands
            // between the probe's last bite and those pages (`unseen-mix`, seeds 101 and
            // 202: classic-stats guests refaulted 0.4 s as the host passed 25 % available).
            let headroom_scale = if r.has_scan_stats {
                headroom_scale
            } else {
                blind_probe_headroom_scale
            };
            let headroom = (class_headroom * headroom_scale)
                .max(IDLE_SLIVER.min(class_headroom))
                .max(memo.growth_bps * reaction_s);
            // Free memory beyond the room the guest keeps for growth.
            let spare_free = (r.free - headroom).max(0.0);

            let pressure = r.swap_in_bps > SWAP_IN_PRESSURE_BPS
                || r.refault_pps > REFAULT_PRESSURE_PPS
                || r.new_ooms > 0;
            let cache_floor = prof.cache_floor_frac * r.cache;
            let mut keep = memo
                .cache_keep
                .unwrap_or(r.cache)
                .min(r.cache.max(cache_floor));
            let mut rule = Rule::Reclaim;
            let detail;
            let current = targets.get(i).map_or(actual, |t| t.as_f64());
            if memo.last_time.is_some() && current + MIN_BAND < memo.last_wish {
                memo.squeezed_at = Some(now);
            }
            if memo.last_time.is_some()
                && memo.last_wish_host_short
                && current + MIB < memo.last_wish
            {
                memo.raise_cut_at = Some(now);
            }
            let squeezed = memo
                .squeezed_at
                .is_some_and(|t| now.saturating_sub(t) <= SQUEEZE_EXPLAINS);
            memo.track_cold_cache(&r, now);
            // An OOM kill frees the workload's memory, and a restarted workload wants it back
            // at once: a guest that looks idle after a kill is not reclaimed below what it
            // used before it for RESTART_HOLD (`unseen-7372`: 1 GiB guests reclaimed to
            // their floor after a kill, OOM-killed again by every restart, 720 times in 6 h).
            // Only the target keeps the room: `lowest` and the fit's idle floor do not, so a
            // short host takes it first.
            if r.new_ooms > 0 && memo.last_time.is_some() {
                let before = memo
                    .last_used
                    .max(memo.restart_room.map_or(0.0, |(u, _)| u));
                memo.restart_room = Some((before, now + RESTART_HOLD));
            }
            let restart = match memo.restart_room {
                Some((before, until)) if now < until => (before - r.used).max(0.0),
                _ => 0.0,
            };
            if pressure {
                // Give back what the guest is missing, with margin, and stop probing.
                let missing = r.swap_in_bps.max(r.refault_pps * PAGE) * interval_s * 10.0;
                // Pages coming back land in the guest's free memory first: only what its
                // free memory above the headroom cannot hold is added (a guest still faulting
                // in what the last boost made room for is not short again; the headroom
                // stays for bursts).
                let boost = (missing.max(256.0 * MIB) - spare_free).max(0.0);
                keep = (keep + boost).min(configured);
                memo.cold_left = None;
                // Pressure right after a hold below the need says nothing about the
                // probe: it goes on once the pressure is gone.
                if !squeezed {
                    memo.probe_paused_until = now + PROBE_PAUSE;
                }
                rule = Rule::DeflatePressure;
                detail = Detail::Pressure {
                    swap_in_bps: r.swap_in_bps,
                    refault_pps: r.refault_pps,
                    new_ooms: r.new_ooms,
                    boost,
                };
            } else if r.efficiency.is_some_and(|e| e < stop_efficiency) {
                // The guest's LRU is scanning hot pages: step back once and stay there —
                // unless the guest was held below its wish: then that is what the LRU
                // shows, not the bottom of the cache.
                let step = prof.probe_per_min * configured * interval_s / 60.0;
                keep = (keep + 2.0 * step).min(r.cache).max(cache_floor);
                if !squeezed {
                    memo.probe_paused_until = now + PROBE_PAUSE;
                }
                detail = Detail::Efficiency {
                    efficiency: r.efficiency.unwrap_or(0.0),
                    stop: stop_efficiency,
                };
            } else if now >= memo.probe_paused_until && (r.has_scan_stats || keep > 0.5 * r.cache) {
                let step = prof.probe_per_min * configured * interval_s / 60.0;
                // Without scan statistics we cannot see the bottom coming: probe only
                // down to half the cache and let refaults stop us.
                let probe_floor = if r.has_scan_stats {
                    cache_floor
                } else {
                    cache_floor.max(0.5 * r.cache)
                };
                keep = (keep - step).max(probe_floor);
                detail = Detail::Probing;
            } else {
                detail = Detail::Keeping;
            }
            // Never count on less cache than the hot part the guest showed, less half the
            // headroom: below that the hot cache would fill the headroom and a burst would
            // meet no free memory (`unseen-2`: a guest OOM-killed by a 380 MiB/s burst).
            // Half the headroom may hold hot cache — a burst evicts it at a refault's cost,
            // never an OOM's.
            if let Some(cold) = memo.cold_left {
                keep = keep.max(r.cache - cold - 0.5 * headroom);
            }
            memo.cache_keep = Some(keep);

            let burst_room = small_guest_burst_room * allocator_scale(configured);
            let need = (r.used + restart + keep + headroom)
                .max(r.used + burst_room)
                .min(configured);
            let explain = Explain::Need(Need {
                need,
                burst_room,
                used: r.used,
                restart,
                keep,
                cache: r.cache,
                headroom,
                headroom_scale,
                detail,
            });

            // What the guest cannot lose without swapping: `used` plus a sliver of room (never
            // more than the headroom). The floor of `lowest`, and the reserve guard's `anon`.
            let anon = r.used + headroom_min.min(class_headroom.max(headroom));

            // Balloon stall: the target is well below actual and actual is not moving.
            let moved_bps = (memo.last_actual - actual).max(0.0) / dt;
            if current + STALL_GAP < actual
                && moved_bps < STALL_RATE_BPS
                && memo.last_time.is_some()
            {
                let since = *memo.stall_since.get_or_insert(now);
                if now.saturating_sub(since) >= STALL_AFTER && now >= memo.inflate_blocked_until {
                    memo.inflate_blocked_until = now + STALL_BLOCK;
                    memo.stall_since = None;
                    let t = (actual + STALL_GIVEBACK).min(configured);
                    wishes.push(Wish {
                        vm: i,
                        target: t,
                        lowest: t,
                        resident: t,
                        idle_floor: t,
                        working_set: (anon, anon),
                        weight: prof.weight * vm.priority,
                        rule: Rule::BalloonStalled,
                        explain: Explain::Stalled {
                            actual,
                            target: current,
                            moved_bps,
                        },
                        host_short: None,
                    });
                    memo.last_time = Some(now);
                    memo.last_counters = Counters::of(&vm.stats);
                    memo.last_actual = actual;
                    memo.last_used = r.used;
                    continue;
                }
            } else {
                memo.stall_since = None;
            }

            let growing = memo.growth_bps * reaction_s > headroom_min;
            // Band: grow at once when below need; shrink only when well above it.
            // The band only delays a shrink (the target never goes below need), so it can be
            // narrow: a quarter of the headroom, and twice the guards' 16 MiB dead band.
            let band = (0.25 * headroom).max(MIN_BAND);
            let blocked = now < memo.inflate_blocked_until;
            // The page cache the guest holds resident: what the probe keeps, or the hot part
            // it measured where `keep` went below it (by at most half the headroom).
            let held = memo.cold_left.map_or(keep, |c| (r.cache - c).max(keep));
            let target = if need > current || rule == Rule::DeflatePressure {
                if rule == Rule::Reclaim {
                    rule = Rule::Deflate;
                }
                need.max(current)
            } else if need + band < current && !blocked {
                // Free memory goes in one step; cache only in small bites, so the probe
                // cannot overshoot into hot pages between two readings.
                let bite = memo.cache_bite();
                let target = need.max(current - spare_free - bite);
                // Only the cache this target really asks for counts against the estimate.
                memo.spend_cold_cache((current - target - spare_free).clamp(0.0, bite));
                target
            } else {
                current
            };
            wishes.push(Wish {
                vm: i,
                target,
                // Under host pressure, never below what the guest uses plus a sliver of
                // room: squeezing further only moves the stall into the guest.
                lowest: anon.min(target),
                resident: (r.used + held).min(target),
                working_set: (anon, anon + keep.min(r.cache)),
                // Never below a sliver of room: a guest left with no free memory at all
                // OOM-kills on its next allocation when it has no swap or cache to give.
                idle_floor: if growing {
                    target
                } else {
                    (r.used + keep)
                        .max(r.used + IDLE_SLIVER.min(headroom))
                        .min(target)
                },
                weight: prof.weight * vm.priority,
                rule,
                explain,
                host_short: None,
            });
            memo.last_time = Some(now);
            memo.last_counters = Counters::of(&vm.stats);
            memo.last_actual = actual;
            memo.last_used = r.used;
        }

        Self::fit_host(&self.settings, obs, wishes);

        for w in wishes.iter_mut() {
            let memo = &mut self.memos[w.vm];
            let current = targets.get(w.vm).copied().unwrap_or(obs.vms[w.vm].actual);
            // A host-short raise the reserve guard took back is not asked for again for
            // RAISE_CUT_HOLD, beyond `used` + kept cache + a sliver, unless the guest is under
            // pressure: the guard would take it back again, and the two would flap every
            // other second (`unseen-sliver`: ±17 MiB, 246,150 actions in a day).
            let under_pressure = matches!(
                w.explain,
                Explain::Need(Need {
                    detail: Detail::Pressure { .. },
                    ..
                })
            );
            if w.rule == Rule::HostShort
                && !under_pressure
                && memo
                    .raise_cut_at
                    .is_some_and(|t| obs.time.saturating_sub(t) < RAISE_CUT_HOLD)
            {
                let cap = current.as_f64().max(w.resident + IDLE_SLIVER);
                if w.target > cap {
                    // The reason counts it as room given up.
                    if let Some((_, taken)) = w.host_short.as_mut() {
                        *taken += w.target - cap;
                    }
                    w.target = cap;
                }
            }
            memo.last_wish = w.target;
            memo.last_wish_host_short = w.rule == Rule::HostShort && w.target > current.as_f64();
            // A take from idle headroom alone (within the band) is not a hold.
            if w.host_short.is_some_and(|(_, taken)| taken > MIN_BAND) {
                memo.squeezed_at = Some(obs.time);
            }
            // A reclaim that would not move the VM by a MiB is not worth proposing.
            let worth = w.rule != Rule::Reclaim
                || ((w.target - current.as_f64()).abs() >= MIB
                    && Bytes::from_f64(w.target) != current);
            if worth {
                out.push(Proposal {
                    vm: w.vm,
                    target: Bytes::from_f64(w.target).align_down(Bytes::mib(1)),
                    rule: w.rule,
                    reason: Reason::Deferred,
                });
            }
        }
    }

    fn working_set(&self, vm: usize) -> Option<WorkingSet> {
        let k = self.wishes.binary_search_by_key(&vm, |w| w.vm).ok()?;
        let (anon, hot) = self.wishes[k].working_set;
        Some(WorkingSet {
            anon: Bytes::from_f64(anon),
            hot: Bytes::from_f64(hot),
        })
    }

    fn explain(&self, obs: &Observation, vm: usize) -> String {
        match self.wishes.binary_search_by_key(&vm, |w| w.vm) {
            Ok(k) => self.wishes[k].text(&self.settings, &obs.vms[vm], obs.host.total),
            Err(_) => String::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Wish {
    vm: usize,
    target: f64,
    lowest: f64,
    /// `used` plus the cache it keeps: what the guest holds resident without headroom.
    /// Down to here (or `lowest`, if higher) the wish is headroom; below it the host takes
    /// hot cache, which only a real shortage justifies.
    resident: f64,
    /// (`used` plus a sliver of room, that plus the page cache it keeps — `keep`, what the
    /// probe has not found cold), whatever the target: what [`Policy::working_set`]
    /// reports to the reserve guard.
    working_set: (f64, f64),
    /// Down to here the wish is idle headroom of a guest that is not growing: taken first
    /// when the host is short (ESX's idle-memory tax, in spirit).
    idle_floor: f64,
    weight: f64,
    rule: Rule,
    explain: Explain,
    /// (host short by, taken from this VM), when the host was short.
    host_short: Option<(f64, f64)>,
}

/// The numbers behind a wish; turned into text only for the proposals the controller
/// sends (formatting every VM's reason every tick would dominate the simulator's time).
#[derive(Debug, Clone, Copy)]
enum Explain {
    /// The usual case: the guest's need and how it was found.
    Need(Need),
    /// The balloon did not follow its target (`target`, bytes) and moved `moved_bps`.
    Stalled {
        actual: f64,
        target: f64,
        moved_bps: f64,
    },
}

/// A guest's need and its parts.
#[derive(Debug, Clone, Copy)]
struct Need {
    need: f64,
    /// The least free memory and cache a roomy host's guest keeps (0 elsewhere).
    burst_room: f64,
    used: f64,
    /// Room kept for a workload an OOM kill stopped (above `used`).
    restart: f64,
    keep: f64,
    cache: f64,
    headroom: f64,
    /// The share of the class's headroom a nearly full host left (1: all of it).
    headroom_scale: f64,
    detail: Detail,
}

#[derive(Debug, Clone, Copy)]
enum Detail {
    Pressure {
        swap_in_bps: f64,
        refault_pps: f64,
        new_ooms: u64,
        boost: f64,
    },
    /// The guest's reclaim efficiency fell below `stop`.
    Efficiency {
        efficiency: f64,
        stop: f64,
    },
    Probing,
    Keeping,
}

impl Wish {
    fn text(&self, settings: &PolicySettings, vm: &VmSample, host_total: Bytes) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        if let Some((short, take)) = self.host_short {
            let _ = write!(
                text,
                "host short by {:.0} MiB (total {} − reserve {}): {} gives up {:.0} MiB of room (weight {:.1}); ",
                short / MIB,
                host_total,
                settings.reserve,
                vm.name,
                take / MIB,
                self.weight
            );
        }
        let n = match self.explain {
            Explain::Need(n) => n,
            Explain::Stalled {
                actual,
                target,
                moved_bps,
            } => {
                let _ = write!(
                    text,
                    "balloon stalled: actual {:.0} MiB, target {:.0} MiB, moving {:.1} MB/s; giving {:.0} MiB back, no inflation for {}",
                    actual / MIB,
                    target / MIB,
                    moved_bps / 1e6,
                    STALL_GIVEBACK / MIB,
                    STALL_BLOCK
                );
                return text;
            }
        };
        let _ = write!(
            text,
            "need {:.0} MiB = used {:.0}",
            n.need / MIB,
            n.used / MIB
        );
        if n.restart > 0.0 {
            let _ = write!(text, " + {:.0} used before an OOM kill", n.restart / MIB);
        }
        let _ = write!(
            text,
            " + cache {:.0} + headroom {:.0}; ",
            n.keep / MIB,
            n.headroom / MIB
        );
        if n.need > n.used + n.restart + n.keep + n.headroom + 0.5 * MIB {
            let _ = write!(
                text,
                "burst room: at least {:.0} MiB free or cache for a burst the next reading has not seen; ",
                n.burst_room / MIB
            );
        }
        if n.headroom_scale < 1.0 {
            let _ = write!(
                text,
                "host nearly full: {:.0}% of the class's headroom; ",
                100.0 * n.headroom_scale
            );
        }
        let _ = match n.detail {
            Detail::Pressure {
                swap_in_bps,
                refault_pps,
                new_ooms,
                boost,
            } => write!(
                text,
                "guest under pressure (swap-in {:.1} MiB/s, major faults {:.0}/s, {} new OOM kills): +{:.0} MiB",
                swap_in_bps / MIB,
                refault_pps,
                new_ooms,
                boost / MIB
            ),
            Detail::Efficiency { efficiency, stop } => write!(
                text,
                "guest reclaim efficiency {:.0}% < {:.0}%{}: only hot page cache left, keeping {:.0} MiB of it",
                100.0 * efficiency,
                100.0 * stop,
                if stop > MIN_RECLAIM_EFFICIENCY {
                    " (host roomy)"
                } else {
                    ""
                },
                n.keep / MIB
            ),
            Detail::Probing => write!(
                text,
                "probing page cache: keep {:.0} MiB of {:.0} MiB",
                n.keep / MIB,
                n.cache / MIB
            ),
            Detail::Keeping => write!(text, "keeping {:.0} MiB of page cache", n.keep / MIB),
        };
        text
    }
}

/// The class's minimum headroom for a guest of this configured size. The batch minimum is a
/// job start's first second (512 MiB) and the cache it reads, sized for a guest of
/// SMALL_GUEST or more; a smaller batch guest has fewer vCPUs to start a job with, so its
/// minimum shrinks in proportion, to MIN_BATCH_START_SCALE of it at 2 GiB and below
/// (`unseen-sliver`: eight 2 GiB batch guests kept 768 MiB each, 37 % of their size, and
/// that headroom alone made the host short while a quarter of it was free; the fit then
/// squeezed a fleet mate's hot cache: 38.9 stall-s where every baseline stalls 0).
fn headroom_min(class: VmClass, prof: &Profile, configured: f64) -> f64 {
    if class == VmClass::Batch {
        prof.headroom_min * (configured / SMALL_GUEST).clamp(MIN_BATCH_START_SCALE, 1.0)
    } else {
        prof.headroom_min
    }
}

/// 0 at or below `none_at`, 1 at or above `whole_at`, linear between: how much of a room a
/// guest keeps at this share of the host available.
fn ramp(share: f64, none_at: f64, whole_at: f64) -> f64 {
    ((share - none_at) / (whole_at - none_at)).clamp(0.0, 1.0)
}

/// How much faster than FAST_ALLOC_BPS a guest of this configured size may allocate.
/// Page faults are taken per vCPU, and a guest's vCPUs grow with its memory (common shapes
/// give 2–8 GiB per vCPU; the policy is not told the vCPU count), so a bigger guest's burst
/// arrives faster: 1 up to SMALL_GUEST, then in proportion, at most MAX_ALLOC_SCALE. (Not
/// below 1 for smaller guests: half the burst room in 1–2 GiB guests made five generated
/// scenarios stall where no baseline does — their bursts were as fast as big guests'.)
/// (`unseen-2292`, `unseen-4014`: 6–8 GiB guests without swap, OOM-killed by 320–490 MiB/s
/// bursts that met 256 MiB of room.)
fn allocator_scale(configured: f64) -> f64 {
    (configured / SMALL_GUEST).clamp(1.0, MAX_ALLOC_SCALE)
}

impl AerostatPolicy {
    /// The host's available memory as a share of it: the share of a class's headroom guests
    /// keep is 1 from FULL_HEADROOM_SHARE up, falling linearly to 0 at ROOMY_SHARE. The
    /// host's own count, not the guests' sizes: balloon room a guest never touched costs the
    /// host nothing, and a guest that just started holds little of its size. Stable: the
    /// memory a smaller headroom hands back is memory the guest had touched, and the room a
    /// larger one gives back is untouched.
    fn available_share(obs: &Observation) -> f64 {
        let total = obs.host.total.as_f64();
        if total <= 0.0 {
            return 1.0;
        }
        obs.host.available.as_f64() / total
    }

    /// When Σ wishes + overheads exceed host total − reserve, lower wishes toward their
    /// `lowest`, cheapest first: lowest weight × room, proportionally.
    fn fit_host(settings: &PolicySettings, obs: &Observation, wishes: &mut [Wish]) {
        let capacity = obs.host.total.saturating_sub(settings.reserve).as_f64();
        let mut committed: f64 = obs
            .vms
            .iter()
            .map(|v| (v.overhead + v.actual).as_f64())
            .sum();
        for w in wishes.iter() {
            committed += w.target - obs.vms[w.vm].actual.as_f64();
        }
        let excess = committed - capacity;
        if excess <= 0.0 {
            return;
        }
        // Three tiers: idle headroom of guests that are not growing first, then any headroom,
        // then the cache each guest keeps, down to its `lowest`; within a tier, in proportion
        // to room ÷ weight.
        let mut left = excess;
        for tier in 0..3 {
            let floor_of = |w: &Wish| match tier {
                0 => w.idle_floor,
                1 => w.resident.max(w.lowest),
                _ => w.lowest,
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
                let headroom: f64 = wishes
                    .iter()
                    .map(|w| (w.target - w.resident).max(0.0))
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
                w.rule = Rule::HostShort;
                let (_, taken) = w.host_short.unwrap_or((0.0, 0.0));
                w.host_short = Some((excess, taken + take));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::HostSample;

    const GIB: u64 = 1 << 30;

    fn settings() -> PolicySettings {
        PolicySettings {
            reserve: Bytes::gib(1),
            interval: Millis::secs(1),
            ..PolicySettings::default()
        }
    }

    fn host(total_gib: u64, free_gib: u64) -> HostSample {
        HostSample {
            total: Bytes::gib(total_gib),
            free: Bytes::gib(free_gib),
            available: Bytes::gib(free_gib),
            ..HostSample::default()
        }
    }

    /// A guest of `configured` GiB at `actual` using `used` MiB with `cache` MiB of cache.
    fn vm(
        name: &str,
        configured: u64,
        actual: u64,
        used_mib: u64,
        cache_mib: u64,
        t: u64,
    ) -> VmSample {
        let mut v = VmSample::new(name, Bytes(configured), Bytes(actual));
        let free = actual.saturating_sub((used_mib + cache_mib) << 20);
        v.stats = GuestStats {
            total: Some(Bytes(actual)),
            free: Some(Bytes(free)),
            available: Some(Bytes(free + (cache_mib << 20))),
            disk_caches: Some(Bytes::mib(cache_mib)),
            swap_in: Some(Bytes(0)),
            major_faults: Some(0),
            oom_kills: Some(0),
            async_scans: Some(0),
            async_reclaims: Some(0),
            last_update: Some(Millis::secs(t)),
            ..GuestStats::default()
        };
        v
    }

    fn obs(t: u64, vms: Vec<VmSample>) -> Observation {
        Observation {
            time: Millis::secs(t),
            host: host(64, 32),
            vms,
        }
    }

    #[test]
    fn an_idle_guest_is_reclaimed_toward_its_need() {
        let mut p = AerostatPolicy::new(settings());
        let props = p.propose(&obs(0, vec![vm("a", 8 * GIB, 8 * GIB, 1024, 0, 0)]), &[]);
        assert_eq!(props.len(), 1);
        let t = props[0].target;
        assert_eq!(props[0].rule, Rule::Reclaim);
        // need = 1 GiB used + 0 cache + max(4 % of 8 GiB, 128 MiB) headroom ≈ 1.33 GiB; the
        // free memory above the headroom goes in one step.
        assert!(t < Bytes::gib(2) && t > Bytes::gib(1), "{t}");
        let reason = props[0].reason.text().expect("written out by propose");
        assert!(reason.contains("need"), "{reason}");
    }

    /// The class's headroom (4 % of 8 GiB ≈ 328 MiB for a general guest) is whole while the
    /// host has 20 % available, half at 15 %, and down to the 64 MiB sliver at 10 % or less.
    #[test]
    fn a_nearly_full_host_shrinks_the_headroom_to_a_sliver() {
        let target_with_available = |available_mib: u64| {
            let mut p = AerostatPolicy::new(settings());
            // 32 GiB: half its headroom (655 MiB) is more than its burst room (512 MiB).
            let mut o = obs(0, vec![vm("a", 32 * GIB, 32 * GIB, 1024, 0, 0)]);
            o.host.available = Bytes::mib(available_mib);
            let props = p.propose(&o, &[]);
            let reason = props[0].reason.text().unwrap_or_default().to_string();
            let cut = reason.contains("host nearly full");
            assert_eq!(cut, available_mib * 10 < 64 * 1024 * 3, "{reason}");
            props[0].target.0 >> 20
        };
        let headroom = 0.04 * 32768.0;
        let whole = 1024 + headroom as u64;
        let half = 1024 + (0.5 * headroom) as u64;
        // Whole from 30 % of the host available; half at 25 %; at 20 % only the sliver is
        // left of the headroom, and half the burst room (512 MiB for 32 GiB) is more; none
        // of either at 15 % and below.
        assert_eq!(target_with_available(32 * 1024), whole);
        assert_eq!(target_with_available(64 * 1024 * 3 / 10 + 1), whole);
        assert_eq!(target_with_available(64 * 1024 / 4), half);
        assert_eq!(target_with_available(64 * 1024 / 5 + 1), 1024 + 256);
        assert_eq!(target_with_available(64 * 1024 * 3 / 20), 1024 + 64);
        assert_eq!(target_with_available(1024), 1024 + 64);
    }

    /// `unseen-7372`: after an OOM kill the guest looks idle; reclaimed to its floor, the
    /// restarted workload was killed again at once, 720 times in 6 h.
    #[test]
    fn room_a_killed_workload_used_is_kept_for_its_restart() {
        let mut p = AerostatPolicy::new(settings());
        let reading = |used_mib: u64, kills: u64, t: u64| {
            let mut v = vm("a", 8 * GIB, 4 * GIB, used_mib, 0, t);
            v.stats.oom_kills = Some(kills);
            obs(t, vec![v])
        };
        let target = |p: &mut AerostatPolicy, o: &Observation| {
            let props = p.propose(o, &[Bytes::gib(4)]);
            props.first().map_or(Bytes::gib(4), |x| x.target)
        };
        target(&mut p, &reading(3000, 0, 0));
        // Killed: `used` falls to 200 MiB, but 3000 MiB stay for the restart ...
        let after_kill = target(&mut p, &reading(200, 1, 1));
        assert!(after_kill >= Bytes::mib(3000), "{after_kill}");
        let later = target(&mut p, &reading(200, 1, 300));
        assert!(later >= Bytes::mib(3000), "{later}");
        let props = p.propose(&reading(200, 1, 301), &[Bytes::gib(4)]);
        let reason = props
            .first()
            .and_then(|x| x.reason.text())
            .unwrap_or_default();
        assert!(reason.contains("used before an OOM kill"), "{reason}");
        // ... for ten minutes.
        let after_hold = target(&mut p, &reading(200, 1, 700));
        assert!(after_hold < Bytes::mib(1000), "{after_hold}");
    }

    /// A 1 GiB guest's class headroom is 128 MiB; on a roomy host it keeps 256 MiB — half a
    /// second of a 512 MiB/s allocator, what a 1 s loop misses of a burst on average.
    #[test]
    fn a_roomy_hosts_guest_keeps_room_for_half_a_second_of_a_burst() {
        let target_with_available = |available_gib: u64| {
            let mut p = AerostatPolicy::new(settings());
            let mut o = obs(0, vec![vm("a", GIB, GIB, 500, 0, 0)]);
            o.host.available = Bytes::gib(available_gib);
            let props = p.propose(&o, &[]);
            let reason = props[0].reason.text().unwrap_or_default().to_string();
            (props[0].target.0 >> 20, reason)
        };
        let (roomy, reason) = target_with_available(32);
        assert_eq!(roomy, 500 + 256, "{reason}");
        assert!(reason.contains("burst room: at least"), "{reason}");
        let (full, reason) = target_with_available(4);
        assert_eq!(full, 500 + 64, "{reason}");
    }

    /// Bigger guests have more vCPUs and fault memory in faster: an 8 GiB guest keeps room
    /// for half a second of 1 GiB/s, a 6 GiB one of 768 MiB/s; no guest more than twice
    /// the small guest's room.
    #[test]
    fn a_bigger_guest_keeps_room_for_a_faster_burst() {
        let burst_room_of = |configured_gib: u64| {
            let mut p = AerostatPolicy::new(settings());
            let size = configured_gib * GIB;
            let mut o = obs(0, vec![vm("a", size, size, 500, 0, 0)]);
            o.host.available = Bytes::gib(200);
            o.host.total = Bytes::gib(256);
            let props = p.propose(&o, &[]);
            let reason = props[0].reason.text().unwrap_or_default().to_string();
            assert!(reason.contains("burst room: at least"), "{reason}");
            (props[0].target.0 >> 20) - 500
        };
        assert_eq!(burst_room_of(1), 256);
        assert_eq!(burst_room_of(4), 256);
        assert_eq!(burst_room_of(6), 384);
        assert_eq!(burst_room_of(8), 512);
        assert_eq!(burst_room_of(12), 512);
    }

    #[test]
    fn swap_ins_deflate_at_once() {
        let mut p = AerostatPolicy::new(settings());
        let a = 2 * GIB;
        p.propose(&obs(0, vec![vm("a", 8 * GIB, a, 1800, 100, 0)]), &[]);
        let mut v = vm("a", 8 * GIB, a, 1800, 100, 1);
        v.stats.swap_in = Some(Bytes::mib(50));
        let props = p.propose(&obs(1, vec![v]), &[]);
        assert_eq!(props[0].rule, Rule::DeflatePressure);
        assert!(
            props[0].target >= Bytes(a) + Bytes::mib(256),
            "{}",
            props[0].target
        );
    }

    #[test]
    fn pinned_memory_earns_no_headroom() {
        let need = |pinned: u64| {
            let mut p = AerostatPolicy::new(settings());
            let mut v = vm("db", 12 * GIB, 12 * GIB, 10240, 0, 0);
            v.class = VmClass::Database;
            v.pinned = Bytes::gib(pinned);
            let p = p.propose(&obs(0, vec![v]), &[]).remove(0);
            (p.target, p.reason.text().unwrap_or_default().to_string())
        };
        // Database headroom is 8 %: of 12 GiB without pinned memory, of 4 GiB with 8 pinned.
        assert_eq!(need(0).0, Bytes::mib(10240 + 983));
        let (target, reason) = need(8);
        assert!(reason.contains("headroom 328;"), "{reason}");
        // The 328 MiB are less than the burst room of a 12 GiB guest on a roomy host.
        assert_eq!(target, Bytes::mib(10240 + 512), "{reason}");
    }

    #[test]
    fn without_scan_statistics_the_headroom_shrinks_only_below_a_roomy_host() {
        // 25 % of the host available: a guest whose probe sees its cache's bottom keeps half
        // its headroom; one whose probe finds hot pages only by refaulting them keeps it
        // whole, until the host is no longer roomy.
        let target = |scan_stats: bool, available_mib: u64| {
            let mut p = AerostatPolicy::new(settings());
            let mut v = vm("a", 32 * GIB, 32 * GIB, 1024, 0, 0);
            if !scan_stats {
                v.stats.async_scans = None;
                v.stats.async_reclaims = None;
            }
            let mut o = obs(0, vec![v]);
            o.host.available = Bytes::mib(available_mib);
            p.propose(&o, &[])[0].target.0 >> 20
        };
        let headroom = 0.04 * 32768.0;
        assert_eq!(target(true, 64 * 1024 / 4), 1024 + (0.5 * headroom) as u64);
        assert_eq!(target(false, 64 * 1024 / 4), 1024 + headroom as u64);
        assert_eq!(
            target(false, 64 * 1024 * 3 / 20),
            1024 + (0.5 * headroom) as u64
        );
    }

    #[test]
    fn page_cache_memavailable_leaves_out_is_not_counted_twice() {
        // A 4 GiB guest with 1000 MiB of page cache, of which MemAvailable counts `counted`:
        // the rest (shmem, the kernel's low-watermark share) is in `used` already, and the
        // need must not count it again as cache the guest keeps.
        let target = |counted_mib: u64| {
            let mut p = AerostatPolicy::new(settings());
            let mut v = vm("a", 4 * GIB, 4 * GIB, 1024, 1000, 0);
            let free = v.stats.free.unwrap_or(Bytes::ZERO);
            v.stats.available = Some(free + Bytes::mib(counted_mib));
            let props = p.propose(&obs(0, vec![v]), &[]);
            (
                props[0].target.0 >> 20,
                props[0].reason.text().unwrap_or_default().to_string(),
            )
        };
        let (all, reason_all) = target(1000);
        let (most, reason_most) = target(900);
        assert_eq!(all, most, "{reason_all} / {reason_most}");
        // (The probe's first step took 1 MiB of the 900.)
        assert!(
            reason_most.contains("used 1124 + cache 899"),
            "{reason_most}"
        );
    }

    #[test]
    fn pressure_adds_only_what_free_memory_cannot_hold() {
        let mut p = AerostatPolicy::new(settings());
        let a = 4 * GIB;
        // 1 GiB used, 100 MiB cache: ~2.9 GiB free, already far more than comes back.
        p.propose(&obs(0, vec![vm("a", 8 * GIB, a, 1024, 100, 0)]), &[]);
        let mut v = vm("a", 8 * GIB, a, 1024, 100, 1);
        v.stats.swap_in = Some(Bytes::mib(10));
        let props = p.propose(&obs(1, vec![v]), &[Bytes(a)]);
        assert_eq!(props[0].rule, Rule::DeflatePressure);
        assert_eq!(props[0].target, Bytes(a), "no boost on top of free memory");
    }

    /// Runs three ticks of a guest whose LRU shows 5 % reclaim efficiency at tick 1,
    /// after the controller sent `held_below` MiB less than the policy asked at tick 0;
    /// returns the reason of tick 2.
    fn reason_after_low_efficiency(held_below: u64) -> String {
        let mut p = AerostatPolicy::new(settings());
        let (c, a) = (8 * GIB, 4 * GIB);
        let wish = p.propose(&obs(0, vec![vm("a", c, a, 1024, 2048, 0)]), &[])[0].target;
        let sent = wish - Bytes::mib(held_below);
        let mut v = vm("a", c, a, 1024, 2048, 1);
        v.stats.async_scans = Some(1000);
        v.stats.async_reclaims = Some(50);
        p.propose(&obs(1, vec![v.clone()]), &[sent]);
        v.stats.last_update = Some(Millis::secs(2));
        let o = obs(2, vec![v]);
        p.propose(&o, &[sent]);
        // The wish's reason, whether or not it moved the target enough to be proposed.
        p.explain(&o, 0)
    }

    #[test]
    fn a_hold_by_the_reserve_guard_does_not_end_the_probe() {
        // Unheld: low efficiency is the bottom of the cache; the probe pauses.
        let unheld = reason_after_low_efficiency(0);
        assert!(unheld.contains("keeping"), "{unheld}");
        // Held 512 MiB below the wish: the low efficiency is the hold's; probing goes on.
        let held = reason_after_low_efficiency(512);
        assert!(held.contains("probing"), "{held}");
    }

    #[test]
    fn a_stalled_balloon_is_detected_and_given_back() {
        let mut p = AerostatPolicy::new(settings());
        // Actual stays at 4 GiB although the controller asked for 2 GiB.
        let mut last = Vec::new();
        for t in 0..20 {
            let v = vm("a", 8 * GIB, 4 * GIB, 1024, 0, t);
            last = p.propose(&obs(t, vec![v]), &[Bytes::gib(2)]);
            if last.iter().any(|x| x.rule == Rule::BalloonStalled) {
                break;
            }
        }
        let stalled = last.iter().find(|x| x.rule == Rule::BalloonStalled);
        assert!(stalled.is_some(), "no stall detected: {last:?}");
        assert_eq!(
            stalled.map(|s| s.target),
            Some(Bytes(4 * GIB) + Bytes::mib(128))
        );
    }

    #[test]
    fn stale_or_missing_stats_hold_the_guest() {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("a", 8 * GIB, 8 * GIB, 1024, 0, 0);
        v.stats = GuestStats::default();
        assert!(
            p.propose(&obs(0, vec![v]), &[]).is_empty(),
            "blind guest must be held"
        );
        let v = vm("a", 8 * GIB, 8 * GIB, 1024, 0, 0);
        // Stats 10 minutes old at t = 600 s.
        assert!(
            p.propose(&obs(600, vec![v]), &[]).is_empty(),
            "stale stats must be ignored"
        );
    }

    #[test]
    fn counters_going_backwards_are_not_pressure() {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("a", 8 * GIB, 2 * GIB, 1500, 100, 0);
        v.stats.swap_in = Some(Bytes::gib(100));
        v.stats.major_faults = Some(1 << 40);
        p.propose(&obs(0, vec![v]), &[]);
        // The guest rebooted (or lies): counters fall. That is not a reason to act.
        let v = vm("a", 8 * GIB, 2 * GIB, 1500, 100, 1);
        let props = p.propose(&obs(1, vec![v]), &[]);
        assert!(
            props.iter().all(|x| x.rule != Rule::DeflatePressure),
            "{props:?}"
        );
    }

    #[test]
    fn absurd_guest_numbers_are_clamped() {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("a", 4 * GIB, 4 * GIB, 1024, 0, 0);
        v.stats.available = Some(Bytes(u64::MAX));
        v.stats.free = Some(Bytes(u64::MAX));
        v.stats.disk_caches = Some(Bytes(u64::MAX));
        for x in p.propose(&obs(0, vec![v]), &[]) {
            assert!(x.target <= Bytes(4 * GIB), "{x:?}");
        }
    }

    #[test]
    fn batch_guests_keep_room_for_a_job_start() {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("b", 8 * GIB, 8 * GIB, 1024, 0, 0);
        v.class = VmClass::Batch;
        let props = p.propose(&obs(0, vec![v]), &[]);
        // One second of a 512 MiB/s allocator plus the cache a new job reads: 768 MiB.
        assert_eq!(props[0].target, Bytes::mib(1024 + 768));
    }

    /// A batch guest below 4 GiB has fewer vCPUs to start a job with: its minimum headroom
    /// shrinks with its size, to half (384 MiB) at 2 GiB and below.
    #[test]
    fn a_small_batch_guest_keeps_less_room_for_a_job_start() {
        let headroom_of = |configured_mib: u64| {
            let mut p = AerostatPolicy::new(settings());
            let size = configured_mib << 20;
            let mut v = vm("b", size, size, 256, 0, 0);
            v.class = VmClass::Batch;
            let props = p.propose(&obs(0, vec![v]), &[]);
            (props[0].target.0 >> 20) - 256
        };
        assert_eq!(headroom_of(4096), 768);
        assert_eq!(headroom_of(3072), 576);
        assert_eq!(headroom_of(2048), 384);
        assert_eq!(headroom_of(1024), 384);
    }

    /// The target proposed after a probe bite that reclaimed `reclaimed` of 1000 scanned pages.
    /// The target after one interval in which the guest's LRU freed `reclaimed` of 1000
    /// scanned pages, on a 64 GiB host with `available_gib` available.
    fn target_after_efficiency(reclaimed: u64, available_gib: u64) -> Bytes {
        let mut p = AerostatPolicy::new(settings());
        let a = 4 * GIB;
        let mut o = obs(0, vec![vm("a", 8 * GIB, a, 1024, 2048, 0)]);
        o.host = host(64, available_gib);
        p.propose(&o, &[]);
        let mut v = vm("a", 8 * GIB, a, 1024, 2048, 1);
        v.stats.async_scans = Some(1000);
        v.stats.async_reclaims = Some(reclaimed);
        o.time = Millis::secs(1);
        o.vms = vec![v];
        p.propose(&o, &[])[0].target
    }

    #[test]
    fn the_cache_probe_goes_on_at_10_percent_efficiency_and_stops_below_9() {
        // A nearly full host (10 GiB of 64 available): the memory is worth the hunt.
        let on = target_after_efficiency(100, 10);
        let stopped = target_after_efficiency(80, 10);
        assert!(
            on < stopped,
            "probing {on} should ask less than stopped {stopped}"
        );
    }

    #[test]
    fn on_a_roomy_host_the_cache_probe_stops_below_30_percent() {
        let on = target_after_efficiency(310, 32);
        let stopped = target_after_efficiency(290, 32);
        assert!(
            on < stopped,
            "probing {on} should ask less than stopped {stopped}"
        );
        assert_eq!(stopped, target_after_efficiency(80, 32));
    }

    #[test]
    fn cold_cache_is_estimated_from_reclaim_efficiency() {
        // Half the scanned pages were freed while 20 MiB went: of the 100 + 20 MiB at the
        // start, 60 were cold; 40 are left.
        let r = Reading {
            cache: 100.0 * MIB,
            reclaimed: 20.0 * MIB,
            efficiency: Some(0.5),
            ..Reading::default()
        };
        assert_eq!(r.cold_cache(), Some(40.0 * MIB));
        assert_eq!(Reading::default().cold_cache(), None);
    }

    #[test]
    fn cache_bites_halve_toward_the_bottom_and_stop_short_of_it() {
        let mut m = Memo::default();
        assert_eq!(m.cache_bite(), MIN_BITE, "unknown: a small bite");
        let bites: Vec<f64> = {
            m.cold_left = Some(200.0 * MIB);
            (0..5)
                .map(|_| {
                    let b = m.cache_bite();
                    m.spend_cold_cache(b);
                    b / MIB
                })
                .collect()
        };
        // 200 → 64 (full), 136 → 64, 72 → 36, 36 left: below two small bites, none.
        assert_eq!(bites, vec![64.0, 64.0, 36.0, 0.0, 0.0]);
        assert!(
            m.cold_left.is_some_and(|c| c > 0.0),
            "never bites into hot pages"
        );
    }

    #[test]
    fn a_phase_change_forgets_the_cold_cache_estimate() {
        let mut m = Memo::default();
        let measured = Reading {
            used: 2048.0 * MIB,
            cache: 1024.0 * MIB,
            efficiency: Some(0.05),
            ..Reading::default()
        };
        m.track_cold_cache(&measured, Millis::ZERO);
        assert_eq!(m.cold_left, Some(0.05 * 1024.0 * MIB));
        // The cache grows by 100 MiB with the same workload: 100 MiB more cold.
        let grown = Reading {
            efficiency: None,
            cache: 1124.0 * MIB,
            ..measured
        };
        m.track_cold_cache(&grown, Millis::secs(1));
        assert_eq!(m.cold_left, Some((0.05 * 1024.0 + 100.0) * MIB));
        // The job ends (used −1 GiB): its hot cache may be cold now; unknown.
        let ended = Reading {
            used: 1024.0 * MIB,
            ..grown
        };
        m.track_cold_cache(&ended, Millis::secs(2));
        assert_eq!(m.cold_left, None);
        // Nor does an estimate outlive a probe pause.
        m.track_cold_cache(&measured, Millis::secs(3));
        m.track_cold_cache(&grown, Millis::secs(3) + PROBE_PAUSE + Millis::secs(1));
        assert_eq!(m.cold_left, None);
    }

    proptest::proptest! {
        /// Whatever the host, the classes, the pressure and the history: `aerostat` never
        /// asks for less than what the guest uses plus a 64 MiB sliver (or its configured
        /// size). Below that only the controller's guards go, when the host needs it.
        #[test]
        fn never_proposes_below_used_plus_a_sliver(
            host_mib in 1024u64..65536,
            free_mib in 0u64..65536,
            guests in proptest::collection::vec(
                (
                    1u64..16,       // configured GiB
                    0u64..=100,     // actual, % of configured
                    0u64..=100,     // used, % of actual
                    0u64..=100,     // cache, % of what is left
                    0usize..5,      // class
                    0u64..4,        // priority ×2
                    0u64..3000,     // major faults per tick
                    0u64..2,        // OOM kills per tick
                ),
                1..6,
            ),
        ) {
            let mut p = AerostatPolicy::new(settings());
            let mut targets: Vec<Bytes> = Vec::new();
            for t in 0..4u64 {
                let vms: Vec<VmSample> = guests
                    .iter()
                    .enumerate()
                    .map(|(k, &(gib, act, used, cache, class, prio, faults, ooms))| {
                        let configured = gib << 30;
                        let actual = (configured * act / 100).max(256 << 20);
                        let used_mib = (actual >> 20) * used / 100;
                        let cache_mib = ((actual >> 20) - used_mib) * cache / 100;
                        let mut v = vm(&format!("g{k}"), configured, actual, used_mib, cache_mib, t);
                        v.class = VmClass::ALL[class];
                        v.priority = 0.5 * (prio + 1) as f64;
                        v.stats.major_faults = Some(faults * t);
                        v.stats.oom_kills = Some(ooms * t);
                        v
                    })
                    .collect();
                let mut o = obs(t, vms);
                o.host = HostSample {
                    total: Bytes::mib(host_mib),
                    free: Bytes::mib(free_mib.min(host_mib)),
                    available: Bytes::mib(free_mib.min(host_mib)),
                    ..HostSample::default()
                };
                if targets.len() != o.vms.len() {
                    targets = o.vms.iter().map(|v| v.actual).collect();
                }
                for x in p.propose(&o, &targets) {
                    let v = &o.vms[x.vm];
                    let used = v.actual - v.stats.available.expect("available");
                    let bottom = (used + Bytes::mib(64)).min(v.configured);
                    proptest::prop_assert!(
                        x.target + Bytes::mib(1) >= bottom,
                        "tick {t}: {} {:?} to {} below used {} + 64 MiB",
                        v.name, x.rule, x.target, used
                    );
                    targets[x.vm] = x.target;
                }
            }
        }
    }

    #[test]
    fn a_guest_squeezed_for_the_host_keeps_a_sliver_of_free_memory() {
        // `unseen-sliver`: a guest with no cache and no swap, squeezed to exactly what it used,
        // was OOM-killed by its next allocation — 840 times in a day.
        let mut p = AerostatPolicy::new(settings());
        let a = vm("a", 8 * GIB, 8 * GIB, 4096, 0, 0);
        let b = vm("b", 8 * GIB, 8 * GIB, 4096, 0, 0);
        let mut o = obs(0, vec![a, b]);
        // Total − reserve is exactly what the two use. The host's own page cache is
        // available, so the class headroom stays whole and the fit must take it.
        o.host = host(9, 0);
        o.host.available = Bytes::gib(2);
        let props = p.propose(&o, &[]);
        assert_eq!(props.len(), 2);
        for x in &props {
            assert_eq!(x.rule, Rule::HostShort);
            assert!(x.target >= Bytes::mib(4096 + 64), "{}: {}", x.vm, x.target);
        }
    }

    #[test]
    fn when_the_floors_do_not_fit_hot_cache_stays_while_host_swap_can_hold_the_rest() {
        // `unabsorbable-surge`: a VM with 13 GiB pinned lands on a full host; until the
        // escape moves a guest away, squeezing the database's hot cache only turns host swap
        // into refaults. Floors: 6 + 6 GiB on a host with 10 GiB of capacity; the targets
        // (8 + 8 GiB) are 6 GiB above it.
        let fits = |swap_total_gib: u64, swap_free_gib: u64, b_migrating: bool| {
            let mut p = AerostatPolicy::new(settings());
            let mut a = vm("a", 8 * GIB, 8 * GIB, 4096, 2048, 0);
            let mut b = vm("b", 8 * GIB, 8 * GIB, 4096, 2048, 0);
            a.min = Some(Bytes::gib(6));
            b.min = Some(Bytes::gib(6));
            b.migrating = b_migrating;
            let mut o = obs(0, vec![a, b]);
            o.host = HostSample {
                swap_total: Bytes::gib(swap_total_gib),
                swap_free: Bytes::gib(swap_free_gib),
                ..host(11, 0)
            };
            let props = p.propose(&o, &[]);
            props.iter().map(|x| x.target).min().expect("proposals")
        };
        let keeps_cache = |t: Bytes| t >= Bytes::mib(4096 + 2048 - 64);
        // Both keep `used` + their cache (the first probe bite aside) ...
        assert!(keeps_cache(fits(16, 16, false)), "{}", fits(16, 16, false));
        // ... also when the guests' pages already fill most of the swap: they are part of
        // the excess, not an addition to it ...
        assert!(keeps_cache(fits(16, 0, false)), "{}", fits(16, 0, false));
        // ... and while one of them is leaving: it holds its memory until it has left ...
        assert!(keeps_cache(fits(16, 16, true)), "{}", fits(16, 16, true));
        // ... unless host swap cannot take the rest: then the cache goes, down to `lowest`.
        assert!(
            fits(1, 1, false) <= Bytes::mib(4096 + 1024),
            "{}",
            fits(1, 1, false)
        );
    }

    #[test]
    fn a_host_short_raise_the_guard_took_back_is_not_asked_for_again() {
        // `unseen-sliver`: the fit raised a guest into headroom the reserve guard then took
        // back as untouched memory, every other second for a day (246,150 actions).
        let mut p = AerostatPolicy::new(settings());
        let mut o = obs(0, vec![]);
        // Capacity 200 MiB short of both needs: the fit trims each raise by ~100 MiB.
        // The host's own page cache is available: the class headroom stays whole.
        o.host = HostSample {
            total: Bytes::mib(1024 + 1352 + 6328 - 200),
            available: Bytes::gib(2),
            ..host(0, 0)
        };
        let targets = [Bytes::mib(1100), Bytes::gib(8)];
        let mut raised = Vec::new();
        for t in 0..3 {
            o.time = Millis::secs(t);
            o.vms = vec![
                vm("a", 8 * GIB, 1100 << 20, 1024, 0, t),
                vm("b", 8 * GIB, 8 * GIB, 6000, 0, t),
            ];
            let props = p.propose(&o, &targets);
            // The guard sends nothing: `a` stays at 1100 MiB.
            raised.push(
                props
                    .iter()
                    .find(|x| x.vm == 0)
                    .filter(|x| x.target > targets[0])
                    .map(|x| (x.rule, x.target)),
            );
        }
        assert!(
            matches!(raised[0], Some((Rule::HostShort, _))),
            "tick 0 raises a into the room the fit left it: {raised:?}"
        );
        assert_eq!(raised[1..], [None, None], "{raised:?}");
    }

    #[test]
    fn another_guests_headroom_never_costs_a_guest_its_hot_cache() {
        // `unseen-sliver`: eight batch guests' headroom made the host "short", and a ninth
        // guest's hot page cache thrashed for it with 4 GiB of the host free. Here `a` grows
        // fast (its headroom is the batch minimum, 768 MiB) and `b` holds 2 GiB of cache the
        // probe has not yet found cold: the host holds both guests' resident memory, not
        // `a`'s headroom on top.
        let mut p = AerostatPolicy::new(settings());
        let mut o = obs(0, vec![]);
        o.host = HostSample {
            total: Bytes::mib(1024 + 8192 + 400),
            free: Bytes::mib(400),
            available: Bytes::mib(400),
            ..HostSample::default()
        };
        for (t, a_used) in [(0, 3000), (1, 4096)] {
            let mut a = vm("a", 8 * GIB, 8 * GIB, a_used, 0, t);
            a.class = VmClass::Batch;
            o.vms = vec![a, vm("b", 8 * GIB, 8 * GIB, 2048, 2048, t)];
            o.time = Millis::secs(t);
            let props = p.propose(&o, &[]);
            let b = props.iter().find(|x| x.vm == 1).expect("b");
            // The probe's first bite of `b`'s cache aside (a few MiB), nothing of it goes.
            assert!(
                b.target >= Bytes::mib(4096 - 32),
                "tick {t}: b {}",
                b.target
            );
        }
    }

    /// When the host is short, the fit takes headroom down to what each guest holds resident —
    /// which includes the hot cache the probe measured, even where `keep` (allowed half the
    /// headroom below it) is lower: headroom is a plan, hot cache is not
    /// (`unseen-cache-first`: 26.6 → 10.8 stall-s).
    #[test]
    fn the_host_short_fit_counts_measured_hot_cache_as_resident() {
        let mut p = AerostatPolicy::new(settings());
        // `b` uses 1 GiB and holds 2 GiB of cache, 1 GiB of it measured cold; `a` uses 2 GiB
        // and holds none. Both are growing, so neither has idle headroom to give first.
        let guests = |t: u64| {
            vec![
                vm("a", 8 * GIB, 4 * GIB, 2048, 0, t),
                vm("b", 8 * GIB, 4 * GIB, 1024, 2048, t),
            ]
        };
        let mut o = obs(0, guests(0));
        // Room for both guests' used memory and `b`'s hot cache (+ the 1 GiB reserve), not
        // for their headroom; a fifth of the host available, so the headroom is whole.
        o.host = HostSample {
            total: Bytes::mib(2048 + 1024 + 1024 + 1024),
            free: Bytes::mib(1100),
            available: Bytes::mib(1100),
            ..HostSample::default()
        };
        p.propose(&o, &[]);
        for m in [0, 1] {
            p.memos[m].growth_bps = 100.0 * MIB;
        }
        p.memos[1].cold_left = Some(1024.0 * MIB);
        p.memos[1].cold_used = 1024.0 * MIB;
        p.memos[1].cold_at = Millis::secs(1);
        p.memos[1].cache_keep = Some(900.0 * MIB);
        o.time = Millis::secs(1);
        o.vms = guests(1);
        let props = p.propose(&o, &[]);
        let b = props.iter().find(|x| x.vm == 1).expect("b");
        let reason = b.reason.text().unwrap_or_default().to_string();
        assert!(reason.contains("host short"), "{reason}");
        assert!(
            b.target >= Bytes::mib(1024 + 1024),
            "{} — {reason}",
            b.target
        );
    }

    #[test]
    fn when_the_host_is_short_important_guests_give_last() {
        let mut p = AerostatPolicy::new(settings());
        let mut a = vm("a", 8 * GIB, 8 * GIB, 4096, 2048, 0);
        a.priority = 4.0;
        let b = vm("b", 8 * GIB, 8 * GIB, 4096, 2048, 0);
        let mut o = obs(0, vec![a, b]);
        o.host = host(12, 0);
        let props = p.propose(&o, &[]);
        let t = |n: usize| props.iter().find(|x| x.vm == n).map(|x| x.target);
        let (ta, tb) = (t(0).expect("a"), t(1).expect("b"));
        assert!(ta > tb, "a (priority 4) {ta} should keep more than b {tb}");
        assert!(props.iter().any(|x| x.rule == Rule::HostShort));
        // Never below what the guests use.
        assert!(tb >= Bytes::gib(4), "{tb}");
    }
}
