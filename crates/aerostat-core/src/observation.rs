//! What a driver tells the controller each tick: one host sample and one sample per VM.
//!
//! Host-side fields are facts the host measured itself (meminfo, vmstat, PSI, the
//! balloon's `actual` as QEMU reports it). Everything under [`GuestStats`] was
//! reported by guest software and is **untrusted**: every field is optional, and
//! the policies clamp it before use (see `docs/trust-model.md`).

use serde::{Deserialize, Serialize};

use crate::units::{Bytes, Millis};

/// One control-loop input. `vms` is sorted by name (drivers guarantee it; the
/// controller re-sorts defensively when it is not).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// Monotonic time of the sample (virtual in the simulator, wall-clock in the daemon).
    pub time: Millis,
    pub host: HostSample,
    #[serde(default)]
    pub vms: Vec<VmSample>,
}

/// Host memory as the host sees it (or as a memory cgroup that stands for the host sees it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSample {
    /// MemTotal, or the cgroup's limit.
    pub total: Bytes,
    /// MemFree.
    pub free: Bytes,
    /// MemAvailable (free plus what the kernel can reclaim without swapping).
    pub available: Bytes,
    /// Buffers + Cached: oVirt MoM counts these as free.
    #[serde(default)]
    pub buffers_cached: Bytes,
    #[serde(default)]
    pub swap_total: Bytes,
    #[serde(default)]
    pub swap_free: Bytes,
    /// Cumulative bytes swapped in since boot (vmstat `pswpin` × page size).
    #[serde(default)]
    pub swap_in: Bytes,
    /// Cumulative bytes swapped out since boot (vmstat `pswpout` × page size).
    #[serde(default)]
    pub swap_out: Bytes,
    /// Cumulative memory "some" stall time in microseconds (PSI `total=`), when known.
    #[serde(default)]
    pub psi_some_us: Option<u64>,
    /// Cumulative memory "full" stall time in microseconds, when known.
    #[serde(default)]
    pub psi_full_us: Option<u64>,
    /// Memory saved by same-page merging (KSM), when known: `pages_sharing` × page size.
    #[serde(default)]
    pub ksm_saved: Option<Bytes>,
    /// Memory held by guests the controller does not drive: QEMUs whose QMP socket the
    /// daemon found but could not adopt (another client holds it, the QEMU does not answer,
    /// its replies were refused), measured on the host from their processes. The host
    /// holds it whatever the balloons do: the controller counts it with the memory balloons
    /// keep beyond their claims, as far as host swap cannot hold it
    /// (`Controller::kept_memory`).
    #[serde(default, skip_serializing_if = "Bytes::is_zero")]
    pub unmanaged: Bytes,
}

impl HostSample {
    /// What the guests' memory and QEMU's overheads may add up to: total − `reserve`, plus
    /// what KSM saves now. Guest memory is counted whole (a balloon's `actual`), so the pages
    /// KSM merged are counted once per guest that maps them; the host holds them once.
    /// Writes to merged pages split them again: the savings then fall, and so does this.
    pub fn capacity(&self, reserve: Bytes) -> Bytes {
        self.total.saturating_sub(reserve) + self.ksm_saved.unwrap_or(Bytes::ZERO)
    }
}

/// What an operator told us about a VM's importance. Profiles differ in how much
/// headroom they keep and how fast they are squeezed (`docs/policy.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmClass {
    #[default]
    General,
    Stateless,
    Database,
    Batch,
    Interactive,
}

impl VmClass {
    pub const ALL: [VmClass; 5] = [
        VmClass::General,
        VmClass::Stateless,
        VmClass::Database,
        VmClass::Batch,
        VmClass::Interactive,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            VmClass::General => "general",
            VmClass::Stateless => "stateless",
            VmClass::Database => "database",
            VmClass::Batch => "batch",
            VmClass::Interactive => "interactive",
        }
    }
}

/// The priorities an operator may write: a thousandfold either way of the default 1.0. Wider
/// ratios say nothing more about who gives memory first, and 1e308 overflowed the policy's
/// weights to infinity.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<f64> = 1e-3..=1e3;

/// Why `priority` is refused, if it is: outside [`PRIORITY_RANGE`] (NaN included). One
/// message for scenario files, the daemon's config and `aerostat decide`.
pub fn priority_problem(priority: f64) -> Option<String> {
    (!PRIORITY_RANGE.contains(&priority)).then(|| {
        // 1e308 written out would be 309 digits.
        let value = if priority == 0.0 || (1e-6..1e6).contains(&priority.abs()) {
            priority.to_string()
        } else {
            format!("{priority:e}")
        };
        format!(
            "{value} is not between {} and {}",
            PRIORITY_RANGE.start(),
            PRIORITY_RANGE.end()
        )
    })
}

/// One VM at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSample {
    /// Stable identity (the QMP socket's file stem in the daemon).
    pub name: String,
    /// Configured (maximum) guest memory: the balloon can give back at most this.
    pub configured: Bytes,
    /// Operator floor ("balloon_min" in MoM and Proxmox). `None`: not set.
    #[serde(default)]
    pub min: Option<Bytes>,
    /// Whether the VM has a working balloon device. Without one it is never targeted.
    #[serde(default = "default_true")]
    pub balloon: bool,
    /// Current guest memory as QEMU reports it (`query-balloon` → `actual`): configured − balloon.
    pub actual: Bytes,
    /// Hypervisor overhead of this VM on the host beyond its guest memory (QEMU, page tables).
    #[serde(default)]
    pub overhead: Bytes,
    /// Guest memory that is pinned (huge pages, VFIO): a balloon cannot take it back.
    #[serde(default)]
    pub pinned: Bytes,
    /// Relative importance; higher is more important. 1.0 when not set. Scenario files and
    /// the daemon's config accept [`PRIORITY_RANGE`].
    #[serde(default = "default_priority")]
    pub priority: f64,
    /// Proxmox-style shares (0 excludes the VM from auto-ballooning). 1000 when not set.
    #[serde(default = "default_shares")]
    pub shares: u32,
    #[serde(default)]
    pub class: VmClass,
    /// The operator's headroom: memory the `aerostat` policy keeps free in this guest above
    /// what it uses and its hot page cache, for a burst the loop has not seen yet (Hyper-V's
    /// memory buffer, in bytes). Like the class headroom it shrinks on a nearly full host.
    /// For a guest the operator knows to burst. `None`: none beyond the class's headroom.
    #[serde(default)]
    pub headroom: Option<Bytes>,
    /// A migration of this VM is in progress.
    #[serde(default)]
    pub migrating: bool,
    /// Whether a live migration can move this VM. `false` for a guest QEMU will not migrate:
    /// a passthrough device without migration support (most VFIO devices: QEMU registers a
    /// migration blocker), or pinned DMA memory the guest's driver must first quiesce. The
    /// escape never chooses such a guest. `true` when not set.
    #[serde(default = "default_true")]
    pub migratable: bool,
    /// Host-measured resident memory of the VM's process, when known.
    #[serde(default)]
    pub rss: Option<Bytes>,
    /// Host-measured: the VM's memory the host has swapped out (the QEMU process's
    /// `VmSwap`), when known. Read by [`crate::swapping`] only, to tell host swapping from
    /// the guest's own.
    #[serde(default)]
    pub host_swapped: Option<Bytes>,
    /// Host-measured: bytes QEMU has read for the guest from the disk the operator declares
    /// it swaps on (`query-blockstats` `rd_bytes`, cumulative), when declared and found. The
    /// guest's swap-ins seen from the host, a stats interval before the guest reports them:
    /// [`crate::swapping`] and the `aerostat` policy's swap-in rate count the larger of its
    /// rate and the guest's (swap in memory, zram, never reaches the disk).
    #[serde(default)]
    pub swap_disk_read: Option<Bytes>,
    /// Host-measured: bytes QEMU has written for the guest to that disk (`wr_bytes`,
    /// cumulative): its swap-outs, the tick they happen. The `aerostat` policy counts them as
    /// pressure when the guest swaps out on its own — its balloon did not just inflate and no
    /// cold-anon squeeze runs — where the guest's stats, polled every few seconds, show the
    /// growth that made it swap only later.
    #[serde(default)]
    pub swap_disk_written: Option<Bytes>,
    /// The guest's swap as the operator declares it (its image's swap device or file).
    /// Balloon statistics carry no swap totals: without this, only a swap-out already seen
    /// shows the guest has swap. `None`: not declared.
    #[serde(default)]
    pub guest_swap: Option<Bytes>,
    /// Guest memory the host backs and nobody touched during the last coldness window
    /// (host-measured: accessed bits of the guest RAM mapping; see docs/observation.md,
    /// "Coldness"). `None`: not measured.
    #[serde(default)]
    pub coldness: Option<Coldness>,
    /// Whether the balloon device has deflate-on-oom (QEMU's `deflate-on-oom` property):
    /// the guest then keeps the balloon's pages in its MemTotal, counted as taken, where
    /// without it MemTotal shrinks with the balloon. `None`: unknown, and the policy takes a
    /// MemTotal within 1 % of the configured size for it — which a real guest's MemTotal
    /// never is below a few GiB (a 1 GiB guest reports 967 MiB).
    #[serde(default)]
    pub deflate_on_oom: Option<bool>,
    /// virtio-mem devices carry the memory above `boot` in whole blocks (`None`: a balloon
    /// alone, which moves by the page).
    #[serde(default)]
    pub blocks: Option<Blocks>,
    /// Guest-reported statistics. Untrusted.
    #[serde(default)]
    pub stats: GuestStats,
}

/// How a VM with virtio-mem devices moves above its boot memory: in `step`s, the devices'
/// blocks together (each device plugs or unplugs whole blocks; a share of a target that is
/// not a whole block is rounded up, `resize::split`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocks {
    /// Boot memory (`-m`): the balloon's part, below which no device goes.
    pub boot: Bytes,
    /// Σ of the devices' block sizes: the least change of a target above `boot` that moves
    /// every device.
    pub step: Bytes,
    /// Whether a balloon beside the devices takes back what rounding a target up to whole
    /// blocks adds (`resize::balloon_trims`): then a target above `boot` is carried out
    /// exactly, not on the block grid. Absent: `false`.
    #[serde(default)]
    pub balloon_trims: bool,
}

/// One host-side coldness measurement of a guest's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coldness {
    /// Guest memory the host backs (touched at some time, not handed back).
    pub touched: Bytes,
    /// Of it, memory not accessed during the window.
    pub idle: Bytes,
    /// When the window closed (host clock, same base as `Observation::time`).
    pub at: Millis,
}

fn default_true() -> bool {
    true
}
fn default_priority() -> f64 {
    1.0
}
fn default_shares() -> u32 {
    1000
}

impl VmSample {
    /// A VM with defaults, handy for tests and examples.
    pub fn new(name: impl Into<String>, configured: Bytes, actual: Bytes) -> VmSample {
        VmSample {
            name: name.into(),
            configured,
            min: None,
            balloon: true,
            actual,
            overhead: Bytes::ZERO,
            pinned: Bytes::ZERO,
            priority: 1.0,
            shares: 1000,
            class: VmClass::General,
            headroom: None,
            migrating: false,
            migratable: true,
            host_swapped: None,
            swap_disk_read: None,
            swap_disk_written: None,
            rss: None,
            guest_swap: None,
            coldness: None,
            deflate_on_oom: None,
            blocks: None,
            stats: GuestStats::default(),
        }
    }

    /// The most a target may fall below `actual` in a tick: the controller's `step`, and at
    /// least one block step of a virtio-mem VM (a smaller fall rounds up to no move at all:
    /// 1 GiB blocks under a 512 MiB step never unplugged; reviewer-4, session 21) — unless
    /// a balloon trims the targets, and so carries a smaller fall.
    pub fn inflate_step(&self, step: Bytes) -> Bytes {
        match self.above_boot().filter(|b| !b.balloon_trims) {
            Some(b) => step.max(b.step),
            None => step,
        }
    }

    /// The lowest target the step bound allows this tick, with `current` the VM's last
    /// target: a step (`inflate_step`) below its size — and for a virtio-mem device above
    /// boot memory, a step below the last target while the device stands no more than a
    /// step above it: the device reports blocks gone a tick after they left the guest, and
    /// counted from the size it reports, an unplug went a step every other tick (session
    /// 25). At most two steps below the reported size, so a stuck device is not run away
    /// from; and below boot memory, where the balloon moves (still deflated while the
    /// device reports more than boot memory), never more than the plain `step` below it (a
    /// block step of 1 GiB under a 512 MiB step asked a balloon for 1 GiB at once).
    pub fn inflate_floor(&self, step: Bytes, current: Bytes) -> Bytes {
        let Some(blocks) = self.above_boot() else {
            return self.actual - step;
        };
        let block_step = self.inflate_step(step);
        let from = current.max(self.actual - block_step).min(self.actual);
        (from - block_step).max(blocks.boot - step)
    }

    /// How far above its target a shrinking VM may still stand and be following it: a
    /// step (`inflate_step`), and above boot memory two — a virtio-mem device reports
    /// blocks gone a tick after they left the guest's free lists. (A device stuck there
    /// counts as following until the policy flags it stalled, 6 s for `aerostat`.)
    pub fn following_slack(&self, step: Bytes) -> Bytes {
        let steps = if self.above_boot().is_some() { 2 } else { 1 };
        Bytes(self.inflate_step(step).0.saturating_mul(steps))
    }

    /// The VM's virtio-mem blocks when its targets above boot memory go by whole block
    /// steps: no balloon trims them.
    pub fn grid(&self) -> Option<Blocks> {
        self.blocks.filter(|b| !b.balloon_trims)
    }

    /// The VM's virtio-mem blocks while it stands above its boot memory (blocks plugged).
    fn above_boot(&self) -> Option<Blocks> {
        self.blocks.filter(|b| self.actual > b.boot)
    }

    /// `target` as the VM's devices can hold it: above boot memory, rounded up to a whole
    /// block step (never above `configured`), as the backend carries it out.
    pub fn on_blocks(&self, target: Bytes) -> Bytes {
        self.block_grid(target, u64::div_ceil)
    }

    /// `target` rounded down to a whole block step above boot memory, where `on_blocks`
    /// rounds up: what a VM with virtio-mem blocks can give when the host needs less than
    /// a block from it and nobody else can give the rest.
    pub fn on_blocks_below(&self, target: Bytes) -> Bytes {
        self.block_grid(target, |above, step| above / step)
    }

    /// `target` on the block grid above boot memory (never above `configured`), the whole
    /// steps above boot counted by `steps(bytes above boot, step)`; at or below boot
    /// memory, without blocks, or with a balloon that trims, `target` itself.
    fn block_grid(&self, target: Bytes, steps: fn(u64, u64) -> u64) -> Bytes {
        match self.grid() {
            Some(b) if target > b.boot && b.step > Bytes::ZERO => {
                let above = steps((target - b.boot).0, b.step.0);
                (b.boot + Bytes(above.saturating_mul(b.step.0))).min(self.configured)
            }
            _ => target,
        }
    }

    /// The lowest target the controller may set: the operator floor, never below the pinned
    /// memory, never above the configured size.
    pub fn floor(&self) -> Bytes {
        self.min
            .unwrap_or(Bytes::ZERO)
            .max(self.pinned)
            .min(self.configured)
    }

    /// Balloon size (memory handed back to the host).
    pub fn balloon_size(&self) -> Bytes {
        self.configured - self.actual
    }
}

/// Guest-reported balloon statistics (virtio-balloon stats as QEMU's `guest-stats`).
/// Counters are cumulative since the guest booted. Every field may be missing or false.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestStats {
    /// MemTotal inside the guest.
    #[serde(default)]
    pub total: Option<Bytes>,
    /// MemFree inside the guest (MoM's `mem_unused`).
    #[serde(default)]
    pub free: Option<Bytes>,
    /// MemAvailable inside the guest.
    #[serde(default)]
    pub available: Option<Bytes>,
    /// Page cache inside the guest.
    #[serde(default)]
    pub disk_caches: Option<Bytes>,
    /// Cumulative bytes swapped in.
    #[serde(default)]
    pub swap_in: Option<Bytes>,
    /// Cumulative bytes swapped out.
    #[serde(default)]
    pub swap_out: Option<Bytes>,
    #[serde(default)]
    pub major_faults: Option<u64>,
    #[serde(default)]
    pub minor_faults: Option<u64>,
    #[serde(default)]
    pub oom_kills: Option<u64>,
    /// Direct-reclaim allocation stalls (Linux ≥ 6.12 guests).
    #[serde(default)]
    pub alloc_stalls: Option<u64>,
    /// Pages scanned by kswapd / by direct reclaim (Linux ≥ 6.12 guests).
    #[serde(default)]
    pub async_scans: Option<u64>,
    #[serde(default)]
    pub direct_scans: Option<u64>,
    /// Pages reclaimed by kswapd / by direct reclaim (Linux ≥ 6.12 guests). Reclaimed ÷
    /// scanned is the guest LRU's reclaim efficiency: it falls as only hot pages remain.
    #[serde(default)]
    pub async_reclaims: Option<u64>,
    #[serde(default)]
    pub direct_reclaims: Option<u64>,
    /// When the guest last refreshed these (host clock, same base as `Observation::time`).
    #[serde(default)]
    pub last_update: Option<Millis>,
}
