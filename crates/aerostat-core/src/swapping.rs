//! Who is swapping a guest's memory: the guest, the host, or both.
//!
//! The two look alike from outside — a slow guest and a busy swap device — and call for
//! opposite answers, so an operator needs them told apart:
//! - **The guest swaps.** Its own counters show it (balloon statistics `swap_in`): it is short
//!   of memory inside, and the answer is memory back (a deflate).
//! - **The host swaps the guest's memory.** The guest sees nothing: to it the page is resident
//!   and an access just takes a disk read. Only the host's counters show it (vmstat `pswpin`,
//!   and the QEMU process's `VmSwap`, [`VmSample::host_swapped`]). The host is short; the
//!   answer is memory from the guests that do not need it, or one guest fewer (the escape).
//! - **Both** is double paging: the guest swaps out a page the host had already swapped out,
//!   which costs a host swap-in to read it and a guest swap-out to write it again.
//!
//! Only swap-*in* counts: pages coming back are pages still wanted. Swap-out alone is cold
//! memory leaving, which a balloon's squeeze does on purpose (docs/policy.md, item 10).
//! Pure: rates come from two observations' cumulative counters.

use serde::{Deserialize, Serialize};

use crate::observation::{Observation, VmSample};
use crate::units::Bytes;

/// Swap-in per second that counts as swapping: the `aerostat` policy's pressure threshold
/// (docs/policy.md, item 6).
pub const SWAPPING_BPS: Bytes = Bytes::mib(1);

/// Whose swapping a guest's memory is going through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapLevel {
    /// Neither swaps it in at [`SWAPPING_BPS`] or more (or nothing shows it).
    None,
    /// The guest swaps in from its own swap.
    Guest,
    /// The host swaps the guest's memory in.
    Host,
    /// Both: double paging.
    Both,
}

impl SwapLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SwapLevel::None => "none",
            SwapLevel::Guest => "guest",
            SwapLevel::Host => "host",
            SwapLevel::Both => "both",
        }
    }
}

/// One guest's verdict, with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Swapping {
    pub level: SwapLevel,
    /// The guest's swap-in, bytes per second, from its own counters (`None`: not reported
    /// on both readings, or a counter that went back).
    pub guest_swap_in_bps: Option<u64>,
    /// The host's swap-in, bytes per second, all guests together.
    pub host_swap_in_bps: Option<u64>,
    /// This guest's memory in host swap now (`None`: not measured).
    pub host_swapped: Option<u64>,
    /// The verdict in words, with its numbers.
    pub why: String,
}

/// A verdict per guest of `now`, in its order. `prev` is the observation before it (`None`
/// at the first: no rates yet). Guest numbers are untrusted: a guest that claims swap-ins it
/// does not have only gets a verdict of `guest` (about itself), never one that points at the
/// host.
pub fn diagnose(prev: Option<&Observation>, now: &Observation) -> Vec<Swapping> {
    let dt = prev.map_or(0.0, |p| now.time.saturating_sub(p.time).as_secs_f64());
    let per_s = |then: Bytes, now: Bytes| {
        (dt > 0.0 && now >= then).then(|| ((now - then).as_f64() / dt) as u64)
    };
    let host_in = prev.and_then(|p| per_s(p.host.swap_in, now.host.swap_in));
    let host_swaps = host_in.is_some_and(|r| r >= SWAPPING_BPS.0);
    now.vms
        .iter()
        .map(|vm| {
            let before = prev.and_then(|p| p.vms.iter().find(|v| v.name == vm.name));
            let guest_in = before
                .and_then(|b| b.stats.swap_in)
                .zip(vm.stats.swap_in)
                .and_then(|(then, now)| per_s(then, now));
            let guest_swaps = guest_in.is_some_and(|r| r >= SWAPPING_BPS.0);
            // The host's swap-in is this guest's when some of its memory is in host swap;
            // unmeasured, it may be.
            let host_has_some = vm.host_swapped.is_none_or(|s| s > Bytes::ZERO);
            let level = match (guest_swaps, host_swaps && host_has_some) {
                (false, false) => SwapLevel::None,
                (true, false) => SwapLevel::Guest,
                (false, true) => SwapLevel::Host,
                (true, true) => SwapLevel::Both,
            };
            Swapping {
                level,
                guest_swap_in_bps: guest_in,
                host_swap_in_bps: host_in,
                host_swapped: vm.host_swapped.map(|b| b.0),
                why: why(level, guest_in, host_in, vm),
            }
        })
        .collect()
}

fn why(level: SwapLevel, guest_in: Option<u64>, host_in: Option<u64>, vm: &VmSample) -> String {
    let rate = |r: Option<u64>| match r {
        Some(r) => format!("{}/s", Bytes(r)),
        None => "unknown".to_string(),
    };
    let share = match vm.host_swapped {
        Some(s) => format!("{} of this guest's memory is in host swap", s),
        None => "this guest's share of host swap is not measured".to_string(),
    };
    match level {
        SwapLevel::None => format!(
            "no swapping: guest swap-in {}, host swap-in {}",
            rate(guest_in),
            rate(host_in)
        ),
        SwapLevel::Guest => format!(
            "the guest swaps in {} from its own swap (host swap-in {}): it is short of memory \
             inside; it needs memory back",
            rate(guest_in),
            rate(host_in)
        ),
        SwapLevel::Host => format!(
            "the host swaps in {} ({share}); the guest's own counters show {}: the host is \
             short, not the guest",
            rate(host_in),
            rate(guest_in)
        ),
        SwapLevel::Both => format!(
            "double paging: the guest swaps in {} from its own swap while the host swaps in {} \
             ({share})",
            rate(guest_in),
            rate(host_in)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::HostSample;
    use crate::units::Millis;

    fn obs(
        secs: u64,
        host_in_mib: u64,
        guest_in_mib: Option<u64>,
        swapped: Option<u64>,
    ) -> Observation {
        let mut vm = VmSample::new("web", Bytes::gib(4), Bytes::gib(4));
        vm.stats.swap_in = guest_in_mib.map(Bytes::mib);
        vm.host_swapped = swapped.map(Bytes::mib);
        Observation {
            time: Millis::secs(secs),
            host: HostSample {
                total: Bytes::gib(16),
                swap_in: Bytes::mib(host_in_mib),
                ..HostSample::default()
            },
            vms: vec![vm],
        }
    }

    /// Levels from the rates between two readings 2 s apart: 4 MiB of swap-in is 2 MiB/s.
    #[test]
    fn each_side_is_named_by_its_own_counters() {
        let cases = [
            // (host MiB then → now, guest MiB then → now, host swapped MiB, level)
            ((0, 0), (Some(0), Some(0)), Some(0), SwapLevel::None),
            ((0, 0), (Some(10), Some(14)), Some(0), SwapLevel::Guest),
            ((10, 14), (Some(0), Some(0)), Some(300), SwapLevel::Host),
            ((10, 14), (Some(10), Some(14)), Some(300), SwapLevel::Both),
            // The host swaps, but none of this guest's memory is in host swap.
            ((10, 14), (Some(0), Some(0)), Some(0), SwapLevel::None),
            // Unmeasured share: the host's swap-in may be this guest's.
            ((10, 14), (None, None), None, SwapLevel::Host),
            // Below 1 MiB/s on either side: not swapping.
            ((10, 11), (Some(10), Some(11)), Some(300), SwapLevel::None),
        ];
        for ((h0, h1), (g0, g1), swapped, level) in cases {
            let d = diagnose(Some(&obs(10, h0, g0, swapped)), &obs(12, h1, g1, swapped));
            assert_eq!(d.len(), 1);
            assert_eq!(d[0].level, level, "{:?}", d[0]);
            assert!(!d[0].why.is_empty());
        }
        let d = diagnose(
            Some(&obs(10, 10, Some(10), Some(300))),
            &obs(12, 14, Some(14), Some(300)),
        );
        assert_eq!(d[0].guest_swap_in_bps, Some(2 << 20));
        assert_eq!(d[0].host_swap_in_bps, Some(2 << 20));
        assert!(d[0].why.starts_with("double paging"), "{}", d[0].why);
    }

    /// No rate without two readings, time between them, and counters that did not go back
    /// (a guest reboot resets its counters; a lying guest may report anything).
    #[test]
    fn no_rate_without_two_sane_readings() {
        let now = obs(12, 14, Some(14), Some(300));
        for prev in [
            None,
            Some(obs(12, 10, Some(10), Some(300))),
            Some(obs(10, 20, Some(20), Some(300))),
        ] {
            let d = diagnose(prev.as_ref(), &now);
            assert_eq!(d[0].level, SwapLevel::None, "{:?}", d[0]);
            assert_eq!(d[0].guest_swap_in_bps, None);
            assert_eq!(d[0].host_swap_in_bps, None);
        }
        // A guest that was not there before has no guest rate; the host's still counts.
        let mut before = obs(10, 10, Some(10), Some(300));
        before.vms[0].name = "other".into();
        let d = diagnose(Some(&before), &now);
        assert_eq!(d[0].guest_swap_in_bps, None);
        assert_eq!(d[0].level, SwapLevel::Host);
    }
}
