//! A balloon that keeps memory it says it gave back.
//!
//! `actual` is what the guest's balloon driver writes into the device; QEMU reports it
//! without checking (docs/trust-model.md). The host's own measure of a VM is its QEMU's
//! resident memory: with the balloon inflated, QEMU discards the pages the guest hands over,
//! so `rss − overhead` stays at or below `actual`. A VM whose `rss − overhead` stays well
//! above `actual` holds memory the reserve guard believes returned: a balloon driver that
//! lies, or guest memory QEMU cannot discard (huge pages). Host facts win over guest claims:
//! once that lasts [`KEPT_AFTER`], the controller raises
//! [`Alert::BalloonKeepsMemory`](crate::Alert::BalloonKeepsMemory), and the reserve guard
//! counts as used what of it host swap cannot hold ([`counted`]).

use crate::observation::{HostSample, VmSample};
use crate::units::{Bytes, Millis};

/// How long `rss − overhead` must stay above `actual` (by more than the margin) before the
/// excess counts: a balloon that is still handing pages over, and QEMU discarding them,
/// close the gap within seconds.
pub const KEPT_AFTER: Millis = Millis(60_000);

/// How far a VM's `rss − overhead` may stray from the guest's own numbers before it says
/// something: the configured overhead is an estimate (a TCG guest's translation cache alone
/// is 60–90 MiB, docs/config.md), plus 1/32 of the guest for its page tables and rounding.
/// The same noise both ways: here (memory kept beyond the balloon's claim) and in the
/// `aerostat` policy's cap on claimed use (memory a guest never touched).
pub(crate) fn margin(vm: &VmSample) -> Bytes {
    Bytes::mib(256) + Bytes(vm.configured.0 / 32)
}

/// Memory `vm`'s QEMU holds beyond what its balloon claims the guest kept, when that is
/// more than the margin; `None` without an RSS, or for a VM without a balloon or migrating
/// (QEMU's RSS then says nothing of the balloon).
pub fn beyond_claim(vm: &VmSample) -> Option<Bytes> {
    if !vm.balloon || vm.migrating {
        return None;
    }
    let kept = vm.rss? - vm.overhead - vm.actual;
    (kept > margin(vm)).then_some(kept)
}

/// Tracks `vm`'s gap in `since` and returns the memory to count as used: the gap, once it has
/// lasted KEPT_AFTER.
pub fn kept(vm: &VmSample, since: &mut Option<Millis>, now: Millis) -> Option<Bytes> {
    let Some(gap) = beyond_claim(vm) else {
        *since = None;
        return None;
    };
    let start = *since.get_or_insert(now);
    (now.saturating_sub(start) >= KEPT_AFTER).then_some(gap)
}

/// How much of the memory balloons keep (`kept`) the reserve guard counts as used: what
/// host swap cannot hold. The daemon and the simulator add what guests the controller does
/// not drive hold (`HostSample::unmanaged`): the same memory to the host, and the same
/// measurement holds for it (session 35: an undriven guest ramping to 13 GiB beside eight
/// driven ones with 16 GiB of host swap at 400 MiB/s, counted whole, squeezed them into
/// 2,755 stall-s; left to host swap, 68, as `static`). The undriven guest's part is what it
/// holds in RAM: pages the host swapped are already out of swap free (counted with them, a
/// guest swapped out cost the driven ones 11,913 stall-s in a reviewer's case).
/// Held memory that host swap can take costs the host a little swap,
/// spread over every guest's idle pages; counting it would squeeze honest guests' working
/// sets into their own swap instead. Measured on a 16 GiB host where a lying 8 GiB guest
/// used 6 GiB while claiming 1.7: counted whole, the two honest guests stalled 2,178 s
/// (107 GiB of guest swap-in); not counted, 4.6 s, with 0.72 GiB of host swap-out. Without
/// host swap, not counting it let the host OOM killer take a VM; counted, none was lost.
pub fn counted(kept: Bytes, host: &HostSample) -> Bytes {
    kept - host.swap_free
}
