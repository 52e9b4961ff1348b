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
//!
//! Where things are: this file holds the constants, the class profiles and the tick
//! (`propose_into`: the host read once into a `HostView`, then each guest's wish in
//! `wish_for` — growth, headroom, cache step, need, stall, target — then the fit, then the
//! finishing pass). `memo.rs`: what the policy remembers about each VM between ticks.
//! `reading.rs`: a guest's stats, clamped and turned into rates. `wish.rs`: the wish and
//! the numbers behind its reason text. `fit.rs`: the host-short fit. `tests.rs`: unit tests.

mod cold_anon;
mod fit;
mod memo;
mod reading;
mod wish;

use crate::controller::GuardConfig;
use crate::decision::Rule;
use crate::observation::{Observation, VmClass, VmSample};
use crate::per_vm::PerVm;
use crate::policy::{Policy, PolicySettings, Proposal, Reason, WorkingSet};
use crate::units::{Bytes, Millis};

use cold_anon::ColdAnon;
use fit::fit_host;
use memo::Memo;
use reading::{Reading, read};
use wish::{Detail, Explain, Need, Wish};

const MIB: f64 = 1048576.0;
const PAGE: f64 = 4096.0;

/// Stats older than this many intervals are ignored (the guest stopped reporting) — the
/// policy's interval, or the guest's own polling period where that is longer
/// (`Memo::stats_period`).
const STALE_INTERVALS: u64 = 5;
/// The longest polling period the staleness rule stretches to: a guest polled less often
/// than this is blind between its polls, and one whose agent died is blind after
/// STALE_INTERVALS of this at most.
const STATS_PERIOD_MAX: Millis = Millis(30_000);
/// A guest swapping in faster than this is under pressure (1 MiB/s, the line `/status`
/// draws too).
const SWAP_IN_PRESSURE_BPS: f64 = crate::swapping::SWAPPING_BYTES_PER_S as f64;
/// A guest major-faulting faster than this (pages/s) is refaulting its working set.
const REFAULT_PRESSURE_PPS: f64 = 256.0;
/// Swap-outs within this long of an inflate are its doing, not pressure: the guest reclaims
/// for a balloon over the tick it inflates and the next (`Reading::swap_out_bps`).
const SWAP_OUT_AFTER_INFLATE: Millis = Millis(3_000);
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
/// Cold page cache the guest's reclaim efficiency says is left (`Reading::cold_cache`) that
/// keeps the probe going below the stop efficiency: in a big cache that is mostly hot, a low
/// efficiency still means much cold cache (`cache-servers`, a reviewer's scenario: 9 % of a
/// 10 GiB cache is 900 MiB cold per guest, which Proxmox took back and aerostat kept). On a
/// roomy host a burst room's worth more is left (`unseen-3132`: a burst refaulted the hot
/// cache a deeper probe had bared).
const COLD_WORTH_PROBING: f64 = 256.0 * MIB;
/// How fast the room a learned burst keeps halves (`Memo::learn_burst`).
const BURST_HALF_LIFE: Millis = Millis(24 * 3600 * 1000);
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
/// The guards' dead band: a change smaller than this is not sent.
const MIN_CHANGE: Bytes = Bytes::mib(16);
/// Free memory a guest that is not growing keeps when the host takes its idle headroom:
/// room for the next few seconds of noise until the policy sees it grow.
const IDLE_SLIVER: f64 = 64.0 * MIB;
/// How long a host-short raise the reserve guard took back is capped (`Memo::raise_cut_at`).
const RAISE_CUT_HOLD: Millis = Millis(30_000);
/// Largest reclaim of non-free memory (page cache) per tick.
const RECLAIM_BITE: f64 = 64.0 * MIB;
/// How long the room a workload held before an OOM kill is kept for its restart.
const RESTART_HOLD: Millis = Millis(10 * 60 * 1000);
/// A kill proves the guest was short of its size: its restart gets this share of what the
/// balloon holds back on top of that size.
const KILL_GROWTH_SHARE: f64 = 0.5;
/// A fall of `used` between two readings by this share of the guest (and at least
/// STOP_MIN) is a workload stopping, not shrinking.
const STOP_SHARE: f64 = 0.25;
const STOP_MIN: f64 = 1024.0 * MIB;
/// The level a stopped workload fell from must have held this long, within this share of
/// the guest: a service that ran, not a boot's or a job's spike.
const STOP_LEVEL_HELD: Millis = Millis(10 * 60 * 1000);
const STOP_LEVEL_BAND: f64 = 0.05;
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
/// Below this share of the host available, a guest keeping more than PAUSE_ENDS_CACHE of page
/// cache is probed even while its probe is paused after pressure: the pause spares a guest
/// refaults for a marginal gain, and a host this short of memory is not a marginal gain
/// (reviewer-2 `nightly-backup-cache`: guests past their backup kept its 3 GiB of cold cache
/// through a 30 min pause while the ones starting theirs met a host 2 % available, 23.8
/// stall-s; 17.2 with this. Reviewer-3 `ksm-vdi-clones`: 4 guest OOM kills, 0.)
const PAUSE_ENDS_SHARE: f64 = 0.05;
/// ... (the cache a small guest keeps is not worth a refault: `unabsorbable-surge` stalled
/// 0.01 s more than MoM when every guest's probe ignored its pause.)
const PAUSE_ENDS_CACHE: f64 = 2.0 * COLD_WORTH_PROBING;
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

/// The `aerostat` policy.
#[derive(Debug)]
pub struct AerostatPolicy {
    settings: PolicySettings,
    /// Per VM of the last observation, in its order.
    memos: PerVm<Memo>,
    /// The last tick's wishes, in VM order: [`Policy::explain`] writes reasons from them.
    wishes: Vec<Wish>,
    /// What the last tick's host-short fit took from guests under memory pressure.
    unmet: f64,
    /// Memory the host holds beyond what balloons claim (`Policy::host_keeps`): not
    /// capacity for the fit.
    kept: f64,
}

impl AerostatPolicy {
    pub fn new(settings: PolicySettings) -> AerostatPolicy {
        AerostatPolicy {
            settings,
            memos: PerVm::new(),
            wishes: Vec::new(),
            unmet: 0.0,
            kept: 0.0,
        }
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
            min_change: MIN_CHANGE,
            inflate_hold: Millis::secs(30),
            stall_block: STALL_BLOCK,
        }
    }

    /// Each tick: read the host once, work out each guest's wish from its own stats, fit
    /// the wishes to the host when it is short, then turn them into proposals.
    fn propose_into(&mut self, obs: &Observation, targets: &[Bytes], out: &mut Vec<Proposal>) {
        self.memos.sync(&obs.vms, |_| Memo::default());
        let host = HostView::of(&self.settings, obs);

        // Per-VM wishes, in VM order: each guest's need, the lowest it accepts under host
        // pressure, the rule and the numbers behind the reason.
        let wishes = &mut self.wishes;
        wishes.clear();
        for (i, vm) in obs.vms.iter().enumerate() {
            let memo = &mut self.memos[i];
            if !vm.balloon || vm.migrating {
                // Start afresh afterwards: rates over a migration mean nothing.
                memo.last_time = None;
                continue;
            }
            let current = targets.get(i).map_or(vm.actual.as_f64(), |t| t.as_f64());
            if let Some(wish) = wish_for(&host, memo, i, vm, current) {
                wishes.push(wish);
            }
        }

        self.unmet = fit_host(&self.settings, obs, self.kept, wishes);

        for w in wishes.iter_mut() {
            let current = targets.get(w.vm).copied().unwrap_or(obs.vms[w.vm].actual);
            if let Some(proposal) = finish(w, &mut self.memos[w.vm], current, obs.time) {
                out.push(proposal);
            }
        }
    }

    fn unmet_need(&self) -> Option<Bytes> {
        Some(Bytes::from_f64(self.unmet))
    }

    fn host_keeps(&mut self, kept: Bytes) {
        self.kept = kept.as_f64();
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

/// What every guest's wish this tick takes from the host and the settings: how full the
/// host is, and the rooms and thresholds that follow from that. Read once a tick.
#[derive(Debug)]
struct HostView {
    now: Millis,
    /// The policy's interval, and in seconds (at least 0.1 s).
    interval: Millis,
    interval_s: f64,
    /// The reaction time, in seconds: the headroom keeps room for this long at the growth
    /// rate seen.
    reaction_s: f64,
    /// The share of a class's headroom a guest keeps at the host's fill ...
    headroom_scale: f64,
    /// ... and that of a guest whose cache probe cannot see the hot pages (no scan
    /// statistics).
    blind_probe_headroom_scale: f64,
    /// At least ROOMY_SHARE of the host available.
    roomy: bool,
    /// Less than PAUSE_ENDS_SHARE of the host available: the cache probe's pauses end.
    probe_pause_off: bool,
    /// Reclaim efficiency below which the cache probe stops.
    stop_efficiency: f64,
    /// The burst room of a guest of up to SMALL_GUEST (`allocator_scale` sizes the rest) ...
    small_guest_burst_room: f64,
    /// ... plus the guards' dead band, scaled alike: a raise smaller than MIN_CHANGE is not
    /// sent, so without it the room a guest keeps drifts that far below the burst room as
    /// `used` creeps up (`unseen-3261`: 12 GiB guests with no swap and no cache kept 507 of
    /// their 512 MiB, and a 512 MiB/s burst OOM-killed two of them).
    burst_room_margin: f64,
}

impl HostView {
    fn of(settings: &PolicySettings, obs: &Observation) -> HostView {
        let interval_s = settings.interval.as_secs_f64().max(0.1);
        let available_share = available_share(obs);
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
        let burst_room_margin = MIN_CHANGE.as_f64() * burst_room_scale;
        HostView {
            now: obs.time,
            interval: settings.interval,
            interval_s,
            reaction_s: 3.0 * interval_s + 2.0,
            headroom_scale,
            blind_probe_headroom_scale,
            roomy,
            probe_pause_off: available_share < PAUSE_ENDS_SHARE,
            stop_efficiency,
            small_guest_burst_room,
            burst_room_margin,
        }
    }
}

/// One guest as its wish this tick sees it.
#[derive(Debug)]
struct Guest<'a> {
    /// Index into `Observation::vms`.
    index: usize,
    vm: &'a VmSample,
    prof: Profile,
    configured: f64,
    actual: f64,
    /// The controller's target for the guest now.
    current: f64,
    /// Its stats this tick.
    r: Reading,
}

/// One guest's wish this tick (`current`: the controller's target for it now), or `None`
/// when it has no fresh stats. In order: the growth seen, the room the guest keeps, what
/// the controller's holds and the cold cache estimate say, the page cache step, the need;
/// then either a stalled balloon's give-back or the target within its band. The memo's
/// updates happen in this order, and each step reads the ones before it.
fn wish_for(
    host: &HostView,
    memo: &mut Memo,
    index: usize,
    vm: &VmSample,
    current: f64,
) -> Option<Wish> {
    let now = host.now;
    // Seconds since the last reading (at least 1 ms; 1 ms when there was none).
    let dt = now
        .saturating_sub(memo.last_time.unwrap_or(now))
        .as_secs_f64()
        .max(1e-3);
    let Some(mut r) = read(vm, memo, now, dt, host.interval) else {
        // Blind: no (fresh) stats. Hold the VM where it is; host pressure is
        // handled by the guards from host facts alone.
        memo.last_time = None;
        return None;
    };
    let actual = vm.actual.as_f64();
    // Blocks off the guest's free lists are gone from it, whatever the device reports yet:
    // a cold-anon squeeze reckons from what the guest has — its MemTotal (and the kernel's
    // part outside it) less those blocks, or the size the device reports if that is less
    // (a device may report blocks gone before MemTotal drops, session 25). The memo keeps
    // what the device reported: the next reading's range of `actual` at its stats is the
    // device's. (A deflate-on-oom balloon's pages are inside MemTotal: the size there.)
    let unplugging = r.without_unplugging(vm, memo, current);
    let squeeze_actual = if unplugging > 0.0 && vm.deflate_on_oom != Some(true) {
        actual.min(r.total + r.hidden - unplugging)
    } else {
        actual
    };
    // The first swap-ins of a cold-anon squeeze are its cost, not pressure.
    memo.cold_anon.excuse_first_pass(vm, &mut r, now);
    // A deflate-on-oom balloon gives pages back from the guest's OOM notifier: `actual`
    // rising past the target nobody raised is a guest at its OOM point — a host-side fact,
    // whatever its statistics say. (Reviewer-4's Windows hosts, whose driver reported them
    // all free, were squeezed, deflated themselves, and were squeezed again, 177 times.)
    let asked = memo.last_actual.max(current);
    if vm.deflate_on_oom == Some(true) && memo.last_time.is_some() && actual > asked + MIB {
        r.self_deflated = actual - asked;
    }
    let g = Guest {
        index,
        vm,
        prof: profile(vm.class),
        configured: vm.configured.as_f64(),
        actual,
        current,
        r,
    };

    memo.track_growth(&r, vm, actual, dt);
    // Before the room: a burst that just outran it sets this tick's room already.
    memo.learn_burst(&r, now);
    let room = Room::of(host, memo, &g);
    let Room {
        headroom_min,
        class_headroom,
        headroom,
        ..
    } = room;
    memo.note_holds(current, now);
    let squeezed = memo.squeezed(now);
    memo.track_cold_cache(&r, now);
    let (restart, restart_why) = memo.room_for_restart(&r, now, actual, g.configured);
    let cache = cache_step(host, memo, &g, &room, squeezed);
    let keep = cache.keep;

    // The page cache the guest holds resident: what the probe keeps, or the hot part
    // it measured where `keep` went below it (by at most half the headroom).
    let held = memo.cold_left.map_or(keep, |c| (r.cache - c).max(keep));
    let burst_room =
        host.small_guest_burst_room * allocator_scale(g.configured) + host.burst_room_margin;
    let mut need = (r.used + restart + keep + headroom).max(r.used + burst_room);
    if room.burst_free > 0.0 {
        need = need.max(r.used + held + room.burst_free);
    }
    let need = need.min(g.configured);
    // Cold anon the host saw idle goes into guest swap: a bite below what the guest holds
    // resident (its free memory and headroom go with it while the squeeze lasts).
    let cold_bite = memo.cold_anon.bite(vm, &r, squeeze_actual, now);
    let explain = Explain::Need(Need {
        need,
        cold_bite: cold_bite.unwrap_or(0.0),
        burst_room,
        burst_free: room.burst_free,
        used: r.used,
        restart,
        restart_why,
        keep,
        cache: r.cache,
        headroom,
        headroom_scale: room.headroom_scale,
        detail: cache.detail,
        unbacked: r.unbacked,
    });

    // What the guest cannot lose without swapping: `used` plus a sliver of room (never
    // more than the headroom). The floor of `lowest`, and the reserve guard's `anon`.
    let anon = r.used + headroom_min.min(class_headroom.max(headroom));

    if let Some(moved_bps) = memo.balloon_stalled(current, actual, dt, now) {
        let block = memo.inflate_blocked_until.saturating_sub(now);
        let wish = stalled_wish(&g, anon, moved_bps, block);
        memo.remember_reading(now, vm, actual, &r);
        return Some(wish);
    }

    let growing = memo.growth_bps * host.reaction_s > headroom_min;
    let (mut target, mut rule) = target_with_band(host, memo, &g, &room, need, cache.rule);
    if let Some(bite) = cold_bite {
        // A bite below what the guest holds resident now: its LRU gives up that much,
        // cold cache first, then cold anon. (Relative to `used`, which the squeeze itself
        // lowers, the target would chase it down at the balloon's speed rather than a bite
        // a tick: `unseen-1104` evicted hot cache that way.)
        let squeeze = ColdAnon::target(&r, squeeze_actual, bite);
        if squeeze < target {
            target = squeeze;
            rule = Rule::Reclaim;
        }
    }
    let wish = Wish {
        vm: index,
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
        weight: g.prof.weight * vm.priority,
        rule,
        explain,
        host_short: None,
    };
    memo.remember_reading(now, vm, actual, &r);
    Some(wish)
}

/// A guest's room to grow until the policy sees it next.
#[derive(Debug)]
struct Room {
    /// The class's minimum headroom for the guest's size ...
    headroom_min: f64,
    /// ... the class's room for surprises: its fraction of the movable memory, at least
    /// that minimum ...
    class_headroom: f64,
    /// ... the share of it the host's fill leaves ...
    headroom_scale: f64,
    /// ... and the headroom kept: that share, at least a sliver, and at least the growth
    /// seen over the reaction time.
    headroom: f64,
    /// Free memory beyond the room the guest keeps for growth.
    spare_free: f64,
    /// Free memory kept above the hot page cache for a burst the guest is known to make.
    burst_free: f64,
}

impl Room {
    fn of(host: &HostView, memo: &Memo, g: &Guest) -> Room {
        // Pinned memory (huge pages, VFIO) is neither grown into nor ballooned: the
        // class fraction applies to the part of the guest that can move.
        let movable = (g.configured - g.vm.pinned.as_f64()).max(0.0);
        let headroom_min = headroom_min(g.vm.class, &g.prof, g.configured);
        let class_headroom = (g.prof.headroom_frac * movable).max(headroom_min);
        // On a nearly full host the class's room for surprises shrinks toward a sliver:
        // the host could not give a surprise much anyway, and the memory is worth more
        // handed back. Room for growth that is seen stays whole. A guest without scan
        // statistics keeps it whole until the host is no longer roomy: its cache probe
        // finds the hot pages only by refaulting them, and the headroom is what stands
        // between the probe's last bite and those pages (`unseen-mix`, seeds 101 and
        // 202: classic-stats guests refaulted 0.4 s as the host passed 25 % available).
        let headroom_scale = if g.r.has_scan_stats {
            host.headroom_scale
        } else {
            host.blind_probe_headroom_scale
        };
        let headroom = (class_headroom * headroom_scale)
            .max(IDLE_SLIVER.min(class_headroom))
            .max(memo.growth_bps * host.reaction_s);
        // Free memory beyond the room the guest keeps for growth.
        let spare_free = (g.r.free - headroom).max(0.0);
        // Room for a burst this guest is known to make: the operator's headroom, or the
        // largest burst it made that outran its room (`Memo::learn_burst`). Free memory,
        // not the class headroom half of which hot cache may fill — a burst evicts that
        // cache at a refault's cost (`cron-bursts`: an hourly 2 GiB job refaulted 0.6 s of
        // hot cache every hour with a learned room the cache lived in). It shrinks with
        // the class headroom on a nearly full host; never past what can move.
        // A burst that OOM-killed the guest is kept whole while the host is not short (the
        // host-short fit still takes it first): a kill is a loss no reclaim pays for
        // (reviewer-2 `many-tiny-guests`: hourly cron jobs in 1 GiB guests on a host 10 %
        // available were OOM-killed at every run, 186 kills, with the room they had
        // learned scaled to nothing).
        let learned = memo.burst_room(host.now)
            * if memo.burst_killed {
                1.0
            } else {
                headroom_scale
            };
        let operator = g.vm.headroom.map_or(0.0, |h| h.as_f64()) * headroom_scale;
        let burst_free = operator.max(learned).min(movable);
        Room {
            headroom_min,
            class_headroom,
            headroom_scale,
            headroom,
            spare_free,
            burst_free,
        }
    }
}

/// This tick's step of the page cache a guest keeps.
#[derive(Debug)]
struct CacheStep {
    /// The page cache the guest keeps (`Memo::cache_keep`).
    keep: f64,
    /// `Rule::DeflatePressure` under pressure, `Rule::Reclaim` otherwise.
    rule: Rule,
    detail: Detail,
}

/// Moves the page cache the guest keeps: up by a boost under pressure, a step back when
/// its LRU shows only hot pages left, a probe step down, or not at all. `squeezed`: the
/// guest was held below its need lately.
fn cache_step(
    host: &HostView,
    memo: &mut Memo,
    g: &Guest,
    room: &Room,
    squeezed: bool,
) -> CacheStep {
    let now = host.now;
    let interval_s = host.interval_s;
    let (r, prof, configured) = (&g.r, &g.prof, g.configured);
    let pressure = r.pressure();
    let cache_floor = prof.cache_floor_frac * r.cache;
    // On a roomy host the cold cache is where a burst lands first, at no cost: the probe
    // leaves a burst room's worth of it.
    let cold_for_bursts = if host.roomy {
        host.small_guest_burst_room * allocator_scale(configured)
    } else {
        0.0
    };
    let mut keep = memo
        .cache_keep
        .unwrap_or(r.cache)
        .min(r.cache.max(cache_floor));
    let mut rule = Rule::Reclaim;
    let detail;
    // While a cold-anon squeeze sets the target the probe learns nothing — the LRU's
    // efficiency is the squeeze's, read by the squeeze — so neither its efficiency stop nor
    // its steps go on: steps taken meanwhile left it below the cache the guest held when the
    // squeeze ended, a gap the guest met with its anon, `used` fell, and the target relative
    // to it followed (`unseen-14121`: 40–60 MiB a second for 8 s, then hot cache refaulted).
    let squeezing = memo.cold_anon.squeezing();
    if pressure {
        // Give back what the guest is missing, with margin, and stop probing.
        let missing =
            r.swap_in_bps.max(r.swap_out_bps).max(r.refault_pps * PAGE) * interval_s * 10.0;
        // Pages coming back land in the guest's free memory first: only what its
        // free memory above the headroom cannot hold is added (a guest still faulting
        // in what the last boost made room for is not short again; the headroom
        // stays for bursts).
        let boost = (missing.max(256.0 * MIB) - room.spare_free).max(0.0);
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
            swap_out_bps: r.swap_out_bps,
            refault_pps: r.refault_pps,
            new_ooms: r.new_ooms,
            self_deflated: r.self_deflated,
            boost,
        };
    } else if !squeezing
        && r.efficiency.is_some_and(|e| e < host.stop_efficiency)
        && r.cold_cache()
            .is_none_or(|cold| cold < COLD_WORTH_PROBING + cold_for_bursts)
    {
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
            stop: host.stop_efficiency,
        };
    } else if (now >= memo.probe_paused_until || host.probe_pause_off && keep > PAUSE_ENDS_CACHE)
        && (r.has_scan_stats || keep > 0.5 * r.cache)
        && !squeezing
    {
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
        keep = keep.max(r.cache - cold - 0.5 * room.headroom);
    }
    memo.cache_keep = Some(keep);
    CacheStep { keep, rule, detail }
}

/// The wish for a guest whose balloon stalled (`Memo::balloon_stalled`): a little more than
/// it holds now, all of it kept.
fn stalled_wish(g: &Guest, anon: f64, moved_bps: f64, block: Millis) -> Wish {
    let t = (g.actual + STALL_GIVEBACK).min(g.configured);
    Wish {
        vm: g.index,
        target: t,
        lowest: t,
        resident: t,
        idle_floor: t,
        working_set: (anon, anon),
        weight: g.prof.weight * g.vm.priority,
        rule: Rule::BalloonStalled,
        explain: Explain::Stalled {
            actual: g.actual,
            target: g.current,
            moved_bps,
            block,
        },
        host_short: None,
    }
}

/// The target for a guest's `need` and the rule that moves it there: up to the need at
/// once, down only when the target is a band above it and inflation is not blocked.
fn target_with_band(
    host: &HostView,
    memo: &mut Memo,
    g: &Guest,
    room: &Room,
    need: f64,
    rule: Rule,
) -> (f64, Rule) {
    let current = g.current;
    let mut rule = rule;
    // Band: grow at once when below need; shrink only when well above it.
    // The band only delays a shrink (the target never goes below need), so it can be
    // narrow: a quarter of the headroom, and twice the guards' 16 MiB dead band.
    let band = (0.25 * room.headroom).max(MIN_BAND);
    let blocked = host.now < memo.inflate_blocked_until;
    let target = if need > current || rule == Rule::DeflatePressure {
        if rule == Rule::Reclaim {
            rule = Rule::Deflate;
        }
        need.max(current)
    } else if need + band < current && !blocked {
        // Free memory goes in one step; cache only in small bites, so the probe
        // cannot overshoot into hot pages between two readings.
        let bite = memo.cache_bite();
        let target = need.max(current - room.spare_free - bite);
        // Only the cache this target really asks for counts against the estimate.
        memo.spend_cold_cache((current - target - room.spare_free).clamp(0.0, bite));
        target
    } else {
        current
    };
    (target, rule)
}

/// After the fit: a wish is remembered for the next tick and becomes a proposal — unless
/// it is a reclaim too small to send. `current`: the controller's target now.
fn finish(w: &mut Wish, memo: &mut Memo, current: Bytes, now: Millis) -> Option<Proposal> {
    cap_cut_raise(w, memo, current, now);
    memo.remember_wish(w, current.as_f64(), now);
    // A reclaim that would not move the VM by a MiB is not worth proposing.
    let worth = w.rule != Rule::Reclaim
        || ((w.target - current.as_f64()).abs() >= MIB && Bytes::from_f64(w.target) != current);
    worth.then(|| Proposal {
        vm: w.vm,
        target: Bytes::from_f64(w.target).align_down(Bytes::mib(1)),
        rule: w.rule,
        reason: Reason::Deferred,
    })
}

/// Caps a host-short raise the reserve guard took back lately.
fn cap_cut_raise(w: &mut Wish, memo: &Memo, current: Bytes, now: Millis) {
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
            .is_some_and(|t| now.saturating_sub(t) < RAISE_CUT_HOLD)
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
}

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

/// The whole burst room (a roomy host's) of a guest of `configured` bytes at a policy
/// interval of `interval_s`, as `wish_for` sizes it, and the share of the host the ramp that
/// scales it spans: for the controller's settle property, which checks the closed loop only
/// where the guests' rooms fit that band.
#[cfg(test)]
pub(crate) fn whole_burst_room(configured: f64, interval_s: f64) -> f64 {
    0.5 * interval_s * FAST_ALLOC_BPS * allocator_scale(configured) + MIN_CHANGE.as_f64()
}
#[cfg(test)]
pub(crate) const BURST_ROOM_BAND: f64 = 2.0 * BURST_ROOM_RAMP;

#[cfg(test)]
mod tests;
