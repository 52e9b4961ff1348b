//! What a Linux guest kernel keeps for itself: the zone watermarks.
//!
//! A guest's kernel keeps free memory up to its zones' *high* watermark: below it kswapd
//! reclaims page cache or swaps, so a balloon that takes the last free pages of a guest
//! takes its page cache instead. MemAvailable subtracts that reserve from MemFree, and
//! also the part of the page cache the kernel expects to keep (half of it, at most the
//! *low* watermark). A 1 GiB Debian guest (Linux 6.12) showed `MemFree − MemAvailable`
//! of 70 MiB with `min_free_kbytes` at 44 MiB (docs/benchmarks.md, session 18).
//!
//! The simulator's guests keep these watermarks, and the `aerostat` policy estimates them
//! from a guest's configured size to tell a guest's page cache from its reserve: the
//! balloon statistics report neither (they carry MemFree, MemAvailable and the caches).

use crate::units::Bytes;

/// A guest's watermarks, summed over its zones: `min` is `vm.min_free_kbytes`; kswapd
/// wakes below `low` and reclaims up to `high`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Watermarks {
    pub min: Bytes,
    pub low: Bytes,
    pub high: Bytes,
}

impl Watermarks {
    /// The watermarks Linux sets for `memory` with `min_free` as `vm.min_free_kbytes`:
    /// the distance from min to low, and low to high, is the larger of a quarter of
    /// `min_free` and 0.1 % of memory (`watermark_scale_factor` = 10).
    pub fn of(memory: Bytes, min_free: Bytes) -> Watermarks {
        let gap = (min_free.as_f64() / 4.0).max(memory.as_f64() / 1000.0);
        Watermarks {
            min: min_free,
            low: Bytes::from_f64(min_free.as_f64() + gap),
            high: Bytes::from_f64(min_free.as_f64() + 2.0 * gap),
        }
    }

    /// A common guest's: Linux with transparent huge pages (every common distribution's
    /// default), whose `min_free_kbytes` holds two huge-page blocks per zone and migrate
    /// type — 44 MiB with two zones (up to 4 GiB: DMA, DMA32), 66 MiB with three — at most
    /// 5 % of memory. (Without THP it is far smaller: √(16 × memory in KiB) KiB, 4 MiB in
    /// a 1 GiB guest; an estimate from this one then keeps that guest a little more.)
    pub fn typical(memory: Bytes) -> Watermarks {
        let thp = if memory > Bytes::gib(4) {
            Bytes::mib(66)
        } else {
            Bytes::mib(44)
        };
        let min_free = thp.min(Bytes::from_f64(memory.as_f64() / 20.0));
        Watermarks::of(memory, min_free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_guest_keeps_what_a_real_one_showed() {
        // The lab's 1 GiB guest: min_free_kbytes 45056 (44 MiB), MemFree − MemAvailable of
        // an idle guest without page cache 70 MiB (high watermark plus lowmem reserves).
        let w = Watermarks::typical(Bytes::gib(1));
        assert_eq!(w.min, Bytes::mib(44));
        assert_eq!(w.low, Bytes::mib(55));
        assert_eq!(w.high, Bytes::mib(66));
    }

    #[test]
    fn big_guests_keep_a_thousandth_of_their_memory_between_watermarks() {
        let w = Watermarks::typical(Bytes::gib(64));
        let gap = Bytes::gib(64).as_f64() / 1000.0;
        assert_eq!(w.min, Bytes::mib(66));
        assert!((w.high.as_f64() - (66.0 * 1048576.0 + 2.0 * gap)).abs() < 2.0);
        // A tiny guest's min_free is capped at 5 % of its memory.
        let tiny = Watermarks::typical(Bytes::mib(256));
        assert!((tiny.min.as_f64() - 256.0 * 1048576.0 / 20.0).abs() < 2.0);
    }
}
