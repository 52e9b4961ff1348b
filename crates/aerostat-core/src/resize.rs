//! One guest-memory target, carried out by the guest's memory devices.
//!
//! A policy decides how much memory a guest should have (`Action::Balloon { target }`), not
//! how it gets there. A guest with only a balloon takes `target` as its balloon target. A
//! guest with virtio-mem devices has two kinds of memory: *boot* memory, which only the
//! balloon can take, and hot-pluggable memory above it, which the devices plug and unplug in
//! whole blocks. Here the devices carry everything above boot memory and the balloon only
//! what lies below it (and, beside large blocks, what rounding up to them adds:
//! [`balloon_trims`]), because unplugging is the better way to take memory:
//! - the memory leaves the guest altogether (QEMU discards the blocks), where a balloon's
//!   pages stay in the guest's address space and its `MemTotal` unless the driver says not;
//! - it goes in whole blocks (2 MiB at least), so the host's huge pages behind it stay whole
//!   — a balloon frees 4 KiB pages scattered through guest memory, which splits them;
//! - the devices are per NUMA node, so the memory comes back where it was.
//!
//! Measured on the lab's guest (docs/benchmarks.md, "virtio-mem"): QEMU's `query-balloon`
//! counts boot memory only, so the two never overlap; unplugging migrates the guest's pages
//! out of the blocks, reclaims page cache and swaps like a balloon does, and stops (without
//! an OOM kill) when the guest has nothing left to give.

use crate::units::Bytes;

/// A virtio-mem device, as far as resizing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pluggable {
    /// The most it can plug (its memory backend's size).
    pub max: Bytes,
    /// Plug and unplug granularity: every requested size is a multiple of it. Non-zero.
    pub block: Bytes,
}

impl Pluggable {
    /// The most this device can be asked to plug: its maximum, in whole blocks.
    pub fn capacity(&self) -> Bytes {
        self.max.align_down(self.block)
    }
}

/// How a guest reaches one memory target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resize {
    /// The balloon's target (QEMU's `balloon value=`, which counts boot memory only).
    pub balloon: Bytes,
    /// Each device's requested size, in the order the devices were given.
    pub plugged: Vec<Bytes>,
}

impl Resize {
    /// The guest's memory once every device and the balloon got there.
    pub fn total(&self) -> Bytes {
        self.plugged.iter().fold(self.balloon, |a, &p| a + p)
    }
}

/// Block steps above this are trimmed by a balloon beside the devices
/// ([`balloon_trims`]). At or below it, rounding a target up to a whole step leaves the
/// guest less than the `aerostat` policy's dead band (16 MiB) more than asked: not worth a
/// balloon command, nor the host huge pages a balloon's scattered 4 KiB pages split.
pub const TRIM_BLOCK_STEP_ABOVE: Bytes = Bytes::mib(16);

/// Whether a balloon carries the part of a target above boot memory that is not a whole
/// block step (`step`: the devices' blocks together): when the guest has one, the step is
/// large, and boot memory is at least a step — the rounding is less than a step, so the
/// target is then met to within a page (with 512 MiB of boot memory beside 1 GiB blocks a
/// target of 600 MiB would leave the guest a page of balloon and 1 GiB plugged, while the
/// controller counted 600 MiB). A guest of 2 GiB with 1 GiB of boot memory and 1 GiB blocks can otherwise hold
/// 1 GiB or 2 GiB and nothing between: a target of 1.4 GiB became 2 GiB, and on a full
/// host those rounded targets did not fit, so the reserve guard squeezed guests to 1 GiB,
/// below their working sets (session 28: seed 1000's generated scenarios with 1 GiB
/// blocks, docs/benchmarks.md).
pub fn balloon_trims(has_balloon: bool, step: Bytes, boot: Bytes) -> bool {
    has_balloon && step > TRIM_BLOCK_STEP_ABOVE && boot >= step
}

/// Splits `target` between the balloon (up to `boot`) and the devices (above it).
///
/// The devices share what lies above boot memory in proportion to their capacity, each share
/// rounded *up* to whole blocks: the guest never gets less than it was given (a floor stays a
/// floor), and at most one block per device more. With `trim` (`balloon_trims`), the balloon
/// takes that rounding back from below boot memory (while it leaves the balloon a page), so
/// the guest gets the target exactly. A target beyond boot memory plus every device's
/// capacity plugs them all. Devices with a zero block size are given nothing (the caller
/// drops such devices; QEMU never reports one).
pub fn split(target: Bytes, boot: Bytes, devices: &[Pluggable], trim: bool) -> Resize {
    let capacity: u128 = devices
        .iter()
        .filter(|d| d.block.0 > 0)
        .map(|d| u128::from(d.capacity().0))
        .sum();
    let above = u128::from(target.saturating_sub(boot).0).min(capacity);
    let plugged: Vec<Bytes> = devices
        .iter()
        .map(|d| {
            if d.block.0 == 0 || capacity == 0 {
                return Bytes::ZERO;
            }
            let cap = u128::from(d.capacity().0);
            // ceil(above × cap / capacity): the shares add up to at least `above`.
            let share = (above * cap).div_ceil(capacity);
            let block = u128::from(d.block.0);
            let blocks = share.div_ceil(block) * block;
            // `share ≤ cap` and `cap` is whole blocks, so this never exceeds the capacity.
            Bytes(u64::try_from(blocks.min(cap)).unwrap_or(u64::MAX))
        })
        .collect();
    let balloon = if trim && above > 0 {
        let total = plugged.iter().fold(0u128, |a, p| a + u128::from(p.0));
        let rounding = u64::try_from(total - above).unwrap_or(u64::MAX);
        // QEMU refuses a balloon target of 0: a page stays.
        boot.saturating_sub(Bytes(rounding)).max(PAGE.min(boot))
    } else {
        target.min(boot)
    };
    Resize { balloon, plugged }
}

/// The balloon's granularity (the virtio-balloon protocol's page).
const PAGE: Bytes = Bytes::kib(4);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB2: Bytes = Bytes::mib(2);

    fn dev(max_mib: u64) -> Pluggable {
        Pluggable {
            max: Bytes::mib(max_mib),
            block: MIB2,
        }
    }

    #[test]
    fn above_boot_memory_is_the_devices_below_it_the_balloons() {
        let boot = Bytes::mib(512);
        let devs = [dev(1024)];
        let r = split(Bytes::mib(900), boot, &devs, false);
        assert_eq!(r.balloon, boot);
        assert_eq!(r.plugged, vec![Bytes::mib(388)]);
        let r = split(Bytes::mib(300), boot, &devs, false);
        assert_eq!(r.balloon, Bytes::mib(300));
        assert_eq!(r.plugged, vec![Bytes::ZERO]);
        // Past everything: all plugged, the balloon deflated.
        let r = split(Bytes::gib(4), boot, &devs, false);
        assert_eq!((r.balloon, r.plugged[0]), (boot, Bytes::mib(1024)));
    }

    #[test]
    fn a_share_is_rounded_up_to_whole_blocks() {
        let r = split(
            Bytes::mib(512) + Bytes(1),
            Bytes::mib(512),
            &[dev(1024)],
            false,
        );
        assert_eq!(r.plugged, vec![MIB2]);
        assert_eq!(r.total(), Bytes::mib(514));
    }

    #[test]
    fn devices_share_in_proportion_to_their_size() {
        // Two NUMA nodes' devices, 1 GiB and 3 GiB: 1 GiB above boot splits 256 / 768 MiB.
        let r = split(Bytes::gib(2), Bytes::gib(1), &[dev(1024), dev(3072)], false);
        assert_eq!(r.plugged, vec![Bytes::mib(256), Bytes::mib(768)]);
    }

    #[test]
    fn a_device_without_a_block_size_gets_nothing() {
        let broken = Pluggable {
            max: Bytes::gib(1),
            block: Bytes::ZERO,
        };
        let r = split(Bytes::gib(2), Bytes::gib(1), &[broken, dev(1024)], false);
        assert_eq!(r.plugged, vec![Bytes::ZERO, Bytes::gib(1)]);
    }

    fn devices() -> impl Strategy<Value = Vec<Pluggable>> {
        prop::collection::vec(
            (0u64..64 << 30, 0u32..4).prop_map(|(max, shift)| Pluggable {
                max: Bytes(max),
                block: Bytes(MIB2.0 << (shift * 3)), // 2, 16, 128, 1024 MiB
            }),
            0..4,
        )
    }

    #[test]
    fn a_trimming_balloon_takes_the_rounding_back() {
        // 1 GiB of boot memory and 1 GiB blocks: 1.4 GiB is one block and 600 MiB less.
        let gib1 = Pluggable {
            max: Bytes::gib(1),
            block: Bytes::gib(1),
        };
        let boot = Bytes::gib(1);
        let target = Bytes::mib(1434);
        let r = split(target, boot, &[gib1], true);
        assert_eq!(r.plugged, vec![Bytes::gib(1)]);
        assert_eq!(r.balloon, Bytes::mib(410));
        assert_eq!(r.total(), target);
        // Without trimming, the whole block.
        assert_eq!(split(target, boot, &[gib1], false).total(), Bytes::gib(2));
        // Below boot memory the balloon alone, as ever.
        let r = split(Bytes::mib(700), boot, &[gib1], true);
        assert_eq!((r.balloon, r.plugged[0]), (Bytes::mib(700), Bytes::ZERO));
        // A rounding past boot memory leaves the balloon a page.
        let r = split(Bytes::mib(100), Bytes::mib(64), &[gib1], true);
        assert_eq!(r.balloon, PAGE);
    }

    #[test]
    fn only_a_balloon_beside_large_blocks_trims() {
        let boot = Bytes::gib(1);
        assert!(balloon_trims(true, Bytes::mib(128), boot));
        assert!(!balloon_trims(true, TRIM_BLOCK_STEP_ABOVE, boot));
        assert!(!balloon_trims(false, Bytes::mib(128), boot));
        // Boot memory must hold a whole step's rounding.
        assert!(balloon_trims(true, Bytes::gib(1), boot));
        assert!(!balloon_trims(true, Bytes::gib(1), boot - PAGE));
    }

    proptest! {
        /// Never less than the target (while the devices can hold it), at most one block
        /// per device more (with a trimming balloon: the target itself, unless the rounding
        /// is more than boot memory), whole blocks within each device's maximum, the balloon
        /// within boot memory, and a larger target never plugs less anywhere nor gets less.
        #[test]
        fn the_split_keeps_its_promises(
            target in 0u64..300 << 30,
            more in 0u64..8 << 30,
            boot in 0u64..64 << 30,
            devs in devices(),
            trim in any::<bool>(),
        ) {
            let (target, boot) = (Bytes(target), Bytes(boot));
            let r = split(target, boot, &devs, trim);
            prop_assert!(r.balloon <= boot);
            let reachable = devs.iter().fold(boot, |a, d| a + d.capacity());
            prop_assert!(r.total() >= target.min(reachable));
            let slack = devs.iter().fold(Bytes::ZERO, |a, d| a + d.block);
            prop_assert!(r.total() <= target + slack);
            let plugged = r.plugged.iter().fold(Bytes::ZERO, |a, &p| a + p);
            if trim && target > boot {
                let least = PAGE.min(boot) + plugged;
                prop_assert_eq!(r.total(), target.min(reachable).max(least));
            }
            for (p, d) in r.plugged.iter().zip(&devs) {
                prop_assert!(*p <= d.max);
                prop_assert_eq!(p.0 % d.block.0, 0);
            }
            let bigger = split(target + Bytes(more), boot, &devs, trim);
            prop_assert!(bigger.total() >= r.total());
            if !trim {
                prop_assert!(bigger.balloon >= r.balloon);
            }
            for (b, p) in bigger.plugged.iter().zip(&r.plugged) {
                prop_assert!(b >= p);
            }
        }
    }
}
