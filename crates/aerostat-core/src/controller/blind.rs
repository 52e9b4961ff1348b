//! What the reserve guard keeps of a guest the policy cannot see.
//!
//! A guest without fresh statistics (no stats service, a dead agent, stats gone stale) has
//! no working-set estimate from the policy, so the reserve guard cannot tell its cold memory
//! from its working set, nor see it swap or OOM-kill. Its layers were once its floor, so it
//! was the first guest squeezed when the host fell short — and nobody saw what that cost it
//! (reviewer-2's `mixed-guest-agents`: a Windows guest without a stats service, 1.5 GiB hot,
//! 1.5 GiB cold and 1 GiB of swap, squeezed from 2.8 to 2.0 GiB and OOM-killed 164 times).
//!
//! Host facts bound what it may lose without harm: everything it has touched may be anon,
//! and its swap (`VmSample::guest_swap`, the operator's word about the image) can hold at
//! most that much of it. So the guard keeps the most it has seen the guest touch beyond
//! its swap since the policy last had an estimate of it (checked once a minute, with the
//! escape's trend: so up to a minute before its blind spell too): a ratchet, because the
//! guard's own squeeze lowers what the guest touches, and each squeeze would lower the next
//! bound. Memory below that goes only in the guard's last pass, down to every guest's
//! floor.

use crate::observation::VmSample;
use crate::units::Bytes;

/// The blind guest's hold this tick, from last tick's (`None` on the first blind tick):
/// the most it has touched beyond its swap, at most its configured size. `None` where the
/// host measure is missing or meaningless (no RSS, a migration filling the destination).
pub(crate) fn hold(last: Option<Bytes>, vm: &VmSample) -> Option<Bytes> {
    let now = vm
        .rss
        .filter(|_| !vm.migrating)
        .map(|rss| (rss - vm.overhead).min(vm.configured) - vm.guest_swap.unwrap_or(Bytes::ZERO));
    match (last, now) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(rss_mib: u64, swap_mib: Option<u64>) -> VmSample {
        let mut vm = VmSample::new("w", Bytes::gib(6), Bytes::gib(6));
        vm.overhead = Bytes::mib(100);
        vm.rss = Some(Bytes::mib(rss_mib + 100));
        vm.guest_swap = swap_mib.map(Bytes::mib);
        vm
    }

    #[test]
    fn keeps_the_most_touched_beyond_swap_while_the_squeeze_lowers_it() {
        let h = hold(None, &vm(4096, Some(1024)));
        assert_eq!(h, Some(Bytes::mib(3072)));
        // Squeezed to 3 GiB: the guest touches less, the hold does not follow it down.
        let h = hold(h, &vm(3072, Some(1024)));
        assert_eq!(h, Some(Bytes::mib(3072)));
        // Growing past it: the hold rises.
        assert_eq!(hold(h, &vm(5120, Some(1024))), Some(Bytes::mib(4096)));
    }

    #[test]
    fn without_swap_all_it_touched_is_kept_and_without_rss_nothing_is_known() {
        assert_eq!(hold(None, &vm(2048, None)), Some(Bytes::mib(2048)));
        let mut unknown = vm(2048, None);
        unknown.rss = None;
        assert_eq!(hold(None, &unknown), None);
        assert_eq!(hold(Some(Bytes::mib(512)), &unknown), Some(Bytes::mib(512)));
    }

    #[test]
    fn a_migrating_guest_does_not_move_it() {
        let mut m = vm(6000, None);
        m.migrating = true;
        assert_eq!(hold(Some(Bytes::mib(512)), &m), Some(Bytes::mib(512)));
    }
}
