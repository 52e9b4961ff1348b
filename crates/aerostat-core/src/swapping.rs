//! Who is swapping a guest's memory: the guest, the host, or both.
//!
//! The two look alike from outside — a slow guest and a busy swap device — and call for
//! opposite answers, so an operator needs them told apart:
//! - **The guest swaps.** Its own counters show it (balloon statistics `swap_in`): it is short
//!   of memory inside, and the answer is memory back (a deflate). Where the operator declared
//!   the disk it swaps on, QEMU's reads from that disk ([`VmSample::swap_disk_read`]) show the
//!   same from the host, sooner, and when the guest does not say; the larger of the two counts
//!   (swap in memory, zram, never reaches the disk).
//! - **The host swaps the guest's memory.** The guest sees nothing: to it the page is resident
//!   and an access just takes a disk read. Only the host shows it: the QEMU process's
//!   `VmSwap` ([`VmSample::host_swapped`]) falls as its pages come back in (counted at most
//!   at the machine's `pswpin`, since it also falls when swapped-out memory is freed); where
//!   `VmSwap` is not measured, the machine's `pswpin` may be this guest's. The host is short; the answer is
//!   memory from the guests that do not need it, or one guest fewer (the escape). (`VmSwap`
//!   leaves out shared memory: a guest whose RAM is a memfd or shmem backend shows no host
//!   swap-in this way.)
//! - **Both** is double paging: the guest swaps out a page the host had already swapped out,
//!   which costs a host swap-in to read it and a guest swap-out to write it again.
//!
//! Only swap-*in* counts: pages coming back are pages still wanted. Swap-out alone is cold
//! memory leaving, which a balloon's squeeze does on purpose (docs/policy.md, item 10).
//! Pure: rates come from two observations' cumulative counters.

use serde::{Deserialize, Serialize};

use crate::observation::{GuestStats, Observation, VmSample};
use crate::units::Bytes;

/// Swap-in per second above which a side counts as swapping; the `aerostat` policy's
/// pressure threshold is this one (docs/policy.md, item 6).
pub const SWAPPING_BYTES_PER_S: u64 = 1 << 20;

/// Whose swap-ins a guest's memory goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapSource {
    /// Neither side swaps it in faster than [`SWAPPING_BYTES_PER_S`] (or nothing shows it).
    None,
    /// The guest swaps in from its own swap.
    Guest,
    /// The host swaps the guest's memory in.
    Host,
    /// Both: double paging.
    Both,
}

impl SwapSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SwapSource::None => "none",
            SwapSource::Guest => "guest",
            SwapSource::Host => "host",
            SwapSource::Both => "both",
        }
    }
}

/// One guest's verdict, with the numbers behind it (bytes per second).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Swapping {
    pub source: SwapSource,
    /// The guest's swap-in by its own counters, over the time between its two statistics
    /// (`None`: no new statistics since the last reading, no timestamps to rate them by
    /// that differ, or a counter that went back).
    pub guest_swap_in_bps: Option<u64>,
    /// The guest's swap-out by its own counters, rated the same way: shown and exported,
    /// not part of the verdict (a guest swapping out is short of memory, which its swap-ins
    /// or its swap disk's writes already tell the policy).
    #[serde(default)]
    pub guest_swap_out_bps: Option<u64>,
    /// This guest's memory the host swapped back in: the fall of its `host_swapped`, at
    /// most the machine's swap-in (the fall also counts swapped-out memory freed without a
    /// read, and misses pages swapped out again within the interval). `None`: not measured
    /// on both readings.
    pub host_swap_in_bps: Option<u64>,
    /// What QEMU read from the guest's declared swap disk (`None`: no disk declared, or not
    /// read on both readings): the guest's swap-ins as the host sees them.
    #[serde(default)]
    pub swap_disk_read_bps: Option<u64>,
    /// What QEMU wrote to that disk (`None` likewise): the guest's swap-outs as the host sees
    /// them — what the `aerostat` policy counts as pressure when the guest swaps out on its
    /// own. Shown beside the verdict; the verdict itself is about swap-ins.
    #[serde(default)]
    pub swap_disk_write_bps: Option<u64>,
    /// The whole machine's swap-in (every process's, not only guests').
    pub machine_swap_in_bps: Option<u64>,
    /// This guest's memory in host swap now (`None`: not measured).
    pub host_swapped: Option<u64>,
    /// The verdict in words, with its numbers.
    pub why: String,
}

/// A verdict per guest of `now`, in its order, from the counters of `prev` (the reading
/// before it). Guest numbers are untrusted: a guest's claims only ever make a verdict of
/// `guest` about itself (worded as its report), never one that points at the host, which
/// host numbers alone decide.
pub fn diagnose(prev: &Observation, now: &Observation) -> Vec<Swapping> {
    let host_dt = now.time.saturating_sub(prev.time).as_secs_f64();
    let machine_in = per_s(prev.host.swap_in, now.host.swap_in, host_dt);
    now.vms
        .iter()
        .map(|vm| {
            let before = prev.vms.iter().find(|v| v.name == vm.name);
            let guest_in = before.and_then(|b| guest_rate(b, vm, host_dt, |s| s.swap_in));
            let guest_out = before.and_then(|b| guest_rate(b, vm, host_dt, |s| s.swap_out));
            // VmSwap also falls when swapped-out guest memory is freed rather than read back
            // (a balloon inflating, a virtio-mem unplug, free page reporting: the kernel
            // drops the swap entries), and a guest can cause that itself: its host swap-ins
            // are at most the machine's.
            let host_in = before
                .and_then(|b| b.host_swapped.zip(vm.host_swapped))
                .and_then(|(then, now)| per_s(now, then, host_dt))
                .zip(machine_in)
                .map(|(fall, machine)| fall.min(machine));
            let disk_in = before
                .and_then(|b| b.swap_disk_read.zip(vm.swap_disk_read))
                .and_then(|(then, now)| per_s(then, now, host_dt));
            let disk_out = before
                .and_then(|b| b.swap_disk_written.zip(vm.swap_disk_written))
                .and_then(|(then, now)| per_s(then, now, host_dt));
            // Either shows the guest swapping: the disk sooner and whatever the guest says,
            // the guest's report also what its swap in memory (zram) serves.
            let guest_swaps = disk_in
                .max(guest_in)
                .is_some_and(|r| r > SWAPPING_BYTES_PER_S);
            // This guest's own host swap-ins where measured; else the machine's, which may
            // be this guest's.
            let host_swaps = match (host_in, vm.host_swapped) {
                (Some(r), _) => r > SWAPPING_BYTES_PER_S,
                (None, None) => machine_in.is_some_and(|r| r > SWAPPING_BYTES_PER_S),
                (None, Some(_)) => false,
            };
            let source = match (guest_swaps, host_swaps) {
                (false, false) => SwapSource::None,
                (true, false) => SwapSource::Guest,
                (false, true) => SwapSource::Host,
                (true, true) => SwapSource::Both,
            };
            let rates = Rates {
                guest: guest_in,
                disk: disk_in,
                host: host_in,
                machine: machine_in,
            };
            Swapping {
                source,
                guest_swap_in_bps: guest_in,
                guest_swap_out_bps: guest_out,
                swap_disk_read_bps: disk_in,
                swap_disk_write_bps: disk_out,
                host_swap_in_bps: host_in,
                machine_swap_in_bps: machine_in,
                host_swapped: vm.host_swapped.map(|b| b.0),
                why: rates.why(source),
            }
        })
        .collect()
}

/// Bytes per second from a cumulative count `then` → `now` over `dt_s`; `None` without
/// time between them or for a count that went back (a reset).
fn per_s(then: Bytes, now: Bytes, dt_s: f64) -> Option<u64> {
    (dt_s > 0.0 && now >= then).then(|| ((now - then).as_f64() / dt_s) as u64)
}

/// A guest counter's rate (its swap-ins or swap-outs, picked by `count`) over the time
/// between its two statistics: QEMU refreshes them on its own timer, so a tick can see none
/// or two refreshes, and rating by the tick would read 0 and then double. Without
/// timestamps, the readings' time.
fn guest_rate(
    before: &VmSample,
    now: &VmSample,
    reading_dt_s: f64,
    count: impl Fn(&GuestStats) -> Option<Bytes>,
) -> Option<u64> {
    let (then, count) = count(&before.stats).zip(count(&now.stats))?;
    let dt_s = match (before.stats.last_update, now.stats.last_update) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => reading_dt_s,
    };
    per_s(then, count, dt_s)
}

/// The three rates, for the words.
struct Rates {
    guest: Option<u64>,
    disk: Option<u64>,
    host: Option<u64>,
    machine: Option<u64>,
}

impl Rates {
    fn why(&self, source: SwapSource) -> String {
        let rate = |r: Option<u64>| match r {
            Some(r) => format!("{}/s", Bytes(r)),
            None => "unknown".to_string(),
        };
        let reported = format!("the guest reports swap-ins of {}", rate(self.guest));
        let guest = match self.disk {
            None => reported,
            Some(d)
                if self.guest.is_some_and(|g| g > SWAPPING_BYTES_PER_S)
                    && d <= SWAPPING_BYTES_PER_S =>
            {
                format!(
                    "{reported}, which its swap disk does not show ({} read: swap in memory, \
                     as zram, or a claim)",
                    rate(Some(d))
                )
            }
            Some(d) => format!("its swap disk reads {} ({reported})", rate(Some(d))),
        };
        let host = match self.host {
            Some(_) => format!("the host swaps {} of its memory back in", rate(self.host)),
            None => format!(
                "the host swaps in {} (the whole machine; this guest's share is not measured)",
                rate(self.machine)
            ),
        };
        match source {
            SwapSource::None => format!("neither side swaps it in: {guest}; {host}"),
            SwapSource::Guest => {
                format!(
                    "{guest} from its own swap: short of memory inside, it needs memory back; {host}"
                )
            }
            SwapSource::Host => format!("{host}; {guest}: the host is short, not the guest"),
            SwapSource::Both => format!("double paging: {guest} from its own swap, and {host}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::HostSample;
    use crate::units::Millis;

    /// A reading at `secs` of a host that has swapped in `machine_mib` and one guest whose
    /// own counter is `guest_mib` (stats refreshed at `stats_secs`) and of whose memory
    /// `swapped_mib` is in host swap.
    fn obs(
        secs: u64,
        machine_mib: u64,
        guest_mib: Option<u64>,
        stats_secs: Option<u64>,
        swapped_mib: Option<u64>,
    ) -> Observation {
        let mut vm = VmSample::new("web", Bytes::gib(4), Bytes::gib(4));
        vm.stats.swap_in = guest_mib.map(Bytes::mib);
        vm.stats.last_update = stats_secs.map(Millis::secs);
        vm.host_swapped = swapped_mib.map(Bytes::mib);
        Observation {
            time: Millis::secs(secs),
            host: HostSample {
                total: Bytes::gib(16),
                swap_in: Bytes::mib(machine_mib),
                ..HostSample::default()
            },
            vms: vec![vm],
        }
    }

    fn one(prev: &Observation, now: &Observation) -> Swapping {
        let d = diagnose(prev, now);
        assert_eq!(d.len(), 1);
        d.into_iter().next().expect("one")
    }

    /// Readings 2 s apart; 6 MiB in 2 s is 3 MiB/s, 2 MiB is 1 MiB/s (not above the line).
    #[test]
    fn each_side_is_named_by_its_own_counters() {
        let cases = [
            // (machine MiB, guest MiB, host-swapped MiB: then → now, source)
            ((0, 0), (0, 0), (0, 0), SwapSource::None),
            ((0, 0), (10, 16), (0, 0), SwapSource::Guest),
            ((10, 16), (0, 0), (300, 294), SwapSource::Host),
            ((10, 16), (10, 16), (300, 294), SwapSource::Both),
            // The machine swaps in, but nothing of this guest's comes back.
            ((10, 16), (0, 0), (300, 300), SwapSource::None),
            ((10, 16), (0, 0), (300, 340), SwapSource::None),
            // At the line, not above it.
            ((10, 12), (10, 12), (300, 298), SwapSource::None),
        ];
        for ((m0, m1), (g0, g1), (s0, s1), source) in cases {
            let v = one(
                &obs(10, m0, Some(g0), Some(10), Some(s0)),
                &obs(12, m1, Some(g1), Some(12), Some(s1)),
            );
            assert_eq!(v.source, source, "{v:?}");
            assert!(!v.why.is_empty());
        }
        let v = one(
            &obs(10, 10, Some(10), Some(10), Some(300)),
            &obs(12, 16, Some(16), Some(12), Some(294)),
        );
        assert_eq!(v.guest_swap_in_bps, Some(3 << 20));
        assert_eq!(v.host_swap_in_bps, Some(3 << 20));
        assert_eq!(v.machine_swap_in_bps, Some(3 << 20));
        assert!(v.why.starts_with("double paging"), "{}", v.why);
    }

    /// The guest's swap-outs are rated over its statistics' own interval, like its swap-ins,
    /// and do not change the verdict.
    #[test]
    fn the_guests_swap_outs_are_rated_over_its_stats_interval() {
        let out = |o: Observation, mib: u64| {
            let mut o = o;
            o.vms[0].stats.swap_out = Some(Bytes::mib(mib));
            o
        };
        // Readings 2 s apart, stats 4 s apart: 40 MiB in 4 s is 10 MiB/s, not 20.
        let v = one(
            &out(obs(10, 0, Some(0), Some(8), Some(0)), 100),
            &out(obs(12, 0, Some(0), Some(12), Some(0)), 140),
        );
        assert_eq!(v.guest_swap_out_bps, Some(10 << 20));
        assert_eq!(v.source, SwapSource::None, "{v:?}");
        // A counter that went back (a rebooted guest) has no rate.
        let v = one(
            &out(obs(10, 0, Some(0), Some(8), Some(0)), 100),
            &out(obs(12, 0, Some(0), Some(12), Some(0)), 40),
        );
        assert_eq!(v.guest_swap_out_bps, None);
    }

    /// Where the guest's swap disk is read, its reads show swapping the guest does not report;
    /// swapping it reports without reads still counts (zram), and the words say so.
    #[test]
    fn the_swap_disk_outranks_the_guests_report() {
        let with_disk = |o: Observation, mib: u64| {
            let mut o = o;
            o.vms[0].swap_disk_read = Some(Bytes::mib(mib));
            o.vms[0].swap_disk_written = Some(Bytes::mib(2 * mib));
            o
        };
        // The guest reports nothing; its disk read 8 MiB in 2 s (and took 16 MiB of writes,
        // shown beside the verdict).
        let v = one(
            &with_disk(obs(10, 0, Some(0), Some(10), Some(0)), 100),
            &with_disk(obs(12, 0, Some(0), Some(12), Some(0)), 108),
        );
        assert_eq!(v.source, SwapSource::Guest, "{v:?}");
        assert_eq!(v.swap_disk_read_bps, Some(4 << 20));
        assert_eq!(v.swap_disk_write_bps, Some(8 << 20));
        assert!(
            v.why.starts_with("its swap disk reads 4 MiB/s"),
            "{}",
            v.why
        );
        // The guest reports 5 MiB/s; the disk read nothing.
        let v = one(
            &with_disk(obs(10, 0, Some(0), Some(10), Some(0)), 100),
            &with_disk(obs(12, 0, Some(10), Some(12), Some(0)), 100),
        );
        assert_eq!(v.source, SwapSource::Guest, "{v:?}");
        assert!(v.why.contains("does not show"), "{}", v.why);
        // Neither.
        let v = one(
            &with_disk(obs(10, 0, Some(0), Some(10), Some(0)), 100),
            &with_disk(obs(12, 0, Some(0), Some(12), Some(0)), 100),
        );
        assert_eq!(v.source, SwapSource::None, "{v:?}");
        // Only one reading with the disk: the guest's report, as without one.
        let v = one(
            &obs(10, 0, Some(0), Some(10), Some(0)),
            &with_disk(obs(12, 0, Some(10), Some(12), Some(0)), 100),
        );
        assert_eq!(v.swap_disk_read_bps, None);
        assert_eq!(v.swap_disk_write_bps, None);
        assert_eq!(v.source, SwapSource::Guest, "{v:?}");
    }

    /// VmSwap falls when swapped-out memory is freed (a balloon inflating): with the machine
    /// swapping nothing in, that is not host swap-in.
    #[test]
    fn freed_swap_is_not_swap_in() {
        let v = one(
            &obs(10, 10, Some(0), Some(10), Some(300)),
            &obs(12, 10, Some(0), Some(12), Some(100)),
        );
        assert_eq!(v.host_swap_in_bps, Some(0));
        assert_eq!(v.source, SwapSource::None, "{v:?}");
        // With the machine at 1.5 MiB/s, this guest's count is at most that.
        let v = one(
            &obs(10, 10, Some(0), Some(10), Some(300)),
            &obs(12, 13, Some(0), Some(12), Some(100)),
        );
        assert_eq!(v.host_swap_in_bps, Some(3 << 19));
    }

    /// Without a measure of this guest's host swap, the machine's swap-in may be its.
    #[test]
    fn unmeasured_host_swap_falls_back_to_the_machine() {
        let v = one(
            &obs(10, 10, Some(0), Some(10), None),
            &obs(12, 16, Some(0), Some(12), None),
        );
        assert_eq!(v.source, SwapSource::Host, "{v:?}");
        assert_eq!(v.host_swap_in_bps, None);
        assert!(v.why.contains("not measured"), "{}", v.why);
    }

    /// The guest's rate is over its statistics' own interval: none when they did not
    /// change, and a refresh that covers 1 s of a 2 s tick is not halved.
    #[test]
    fn the_guest_is_rated_over_its_statistics_interval() {
        // Stats refreshed at 11 and 12: 3 MiB in 1 s.
        let v = one(
            &obs(10, 0, Some(10), Some(11), Some(0)),
            &obs(12, 0, Some(13), Some(12), Some(0)),
        );
        assert_eq!(v.guest_swap_in_bps, Some(3 << 20));
        assert_eq!(v.source, SwapSource::Guest);
        // No refresh since the last reading: no rate, not 0.
        let v = one(
            &obs(10, 0, Some(10), Some(11), Some(0)),
            &obs(12, 0, Some(10), Some(11), Some(0)),
        );
        assert_eq!(v.guest_swap_in_bps, None);
        assert_eq!(v.source, SwapSource::None);
        // No timestamps: the readings' time.
        let v = one(
            &obs(10, 0, Some(10), None, Some(0)),
            &obs(12, 0, Some(16), None, Some(0)),
        );
        assert_eq!(v.guest_swap_in_bps, Some(3 << 20));
    }

    /// No rate across a reset, without time between readings, or for a guest that was not
    /// there before; the host's numbers still count.
    #[test]
    fn no_rate_without_two_sane_readings() {
        let now = obs(12, 16, Some(16), Some(12), Some(294));
        let reset = obs(10, 20, Some(20), Some(10), Some(300));
        let v = one(&reset, &now);
        assert_eq!((v.guest_swap_in_bps, v.machine_swap_in_bps), (None, None));
        assert_eq!(
            v.host_swap_in_bps, None,
            "no machine rate to bound VmSwap's fall by"
        );
        let same_time = obs(12, 10, Some(10), Some(12), Some(300));
        let v = one(&same_time, &now);
        assert_eq!(v.source, SwapSource::None, "{v:?}");
        let mut other = obs(10, 10, Some(10), Some(10), Some(300));
        other.vms[0].name = "other".into();
        let v = one(&other, &now);
        assert_eq!((v.guest_swap_in_bps, v.host_swap_in_bps), (None, None));
        assert_eq!(
            v.source,
            SwapSource::None,
            "measured here, nothing came back: {v:?}"
        );
    }
}
