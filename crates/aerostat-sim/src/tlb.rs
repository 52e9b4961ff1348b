//! TLB shootdowns from ballooning, a hardware cost no other metric shows (seed 000).
//!
//! When the host takes pages from a guest (a balloon inflating, a virtio-mem device
//! unplugging), their translations must leave every TLB that may hold them: the host
//! invalidates the mappings and every vCPU flushes. The seed's model: with `C` vCPUs of `N`
//! TLB entries each, filled evenly from a working set of `W` pages, taking `B` pages flushes
//! `C × N × (B / W)` entries on average (at most every entry, `C × N`). Each flushed entry
//! the guest needs again is refilled by a page walk — under EPT a two-dimensional one, up to
//! 24 memory references where bare metal needs 4 (seed 004) — at `refill` each.
//!
//! Opt-in (`[tlb]` in a scenario): it is an estimate from the seed's formula and hardware
//! numbers the scenario states, reported next to the stall (`tlb_entries_flushed`,
//! `tlb_refill_seconds`), never inside it: a refill is CPU time, not a wait on memory, and
//! the policy judgement of the product brief counts only the latter. It is a lower bound
//! on a real host: KVM flushes a vCPU's whole TLB per batch of invalidated pages, not only
//! the entries of the pages taken.

use std::str::FromStr;

use serde::Deserialize;

/// `[tlb]` in a scenario, validated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TlbSpec {
    /// TLB entries per vCPU (`N`).
    pub entries: u32,
    /// vCPUs per guest (`C`), the same for every guest.
    pub vcpus: u32,
    /// Seconds to refill one flushed entry.
    pub refill_s: f64,
}

impl TlbSpec {
    /// Expected entries flushed across the guest's vCPUs when `taken` bytes leave a guest
    /// whose working set is `working_set` bytes (the ratio of pages is the ratio of bytes).
    /// A guest with no working set left loses every entry it holds.
    pub fn flushed(&self, taken: f64, working_set: f64) -> f64 {
        if taken <= 0.0 {
            return 0.0;
        }
        let share = if working_set > taken {
            taken / working_set
        } else {
            1.0
        };
        f64::from(self.vcpus) * f64::from(self.entries) * share
    }
}

/// `[tlb]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlb {
    /// TLB entries per vCPU (default 1536, a second-level TLB of a current x86 core).
    #[serde(default)]
    pub entries: Option<u32>,
    /// vCPUs of every guest (default 2).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Time to refill one entry, like "60ns" (default 60 ns: a two-dimensional walk
    /// mostly served from the caches).
    #[serde(default, deserialize_with = "crate::scenario::human_opt")]
    pub refill: Option<Nanos>,
}

impl RawTlb {
    /// The spec, or the key that is wrong and why.
    pub fn validate(&self) -> Result<TlbSpec, (&'static str, String)> {
        let entries = self.entries.unwrap_or(1536);
        if !(1..=1 << 20).contains(&entries) {
            return Err(("entries", format!("{entries} is not in 1 – 1048576")));
        }
        let vcpus = self.vcpus.unwrap_or(2);
        if !(1..=1024).contains(&vcpus) {
            return Err(("vcpus", format!("{vcpus} is not in 1 – 1024")));
        }
        let refill = self.refill.unwrap_or(Nanos(60.0));
        if !(refill.0 > 0.0 && refill.0 <= 1e6) {
            return Err(("refill", format!("{refill} is not in (0, 1ms]")));
        }
        Ok(TlbSpec {
            entries,
            vcpus,
            refill_s: refill.0 * 1e-9,
        })
    }
}

/// A short time in nanoseconds: "60ns", "1.5us" (or "1.5µs").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nanos(pub f64);

impl std::fmt::Display for Nanos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ns", self.0)
    }
}

impl FromStr for Nanos {
    type Err = String;
    fn from_str(s: &str) -> Result<Nanos, String> {
        let t = s.trim();
        let (number, scale) = if let Some(n) = t.strip_suffix("ns") {
            (n, 1.0)
        } else if let Some(n) = t.strip_suffix("us").or_else(|| t.strip_suffix("µs")) {
            (n, 1e3)
        } else {
            return Err(format!(
                "`{s}` is not a time in ns or us (write it like \"60ns\")"
            ));
        };
        match number.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Nanos(v * scale)),
            _ => Err(format!(
                "`{s}` is not a time in ns or us (write it like \"60ns\")"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TlbSpec {
        RawTlb {
            entries: None,
            vcpus: Some(4),
            refill: None,
        }
        .validate()
        .expect("valid")
    }

    /// The seed's formula: 4 vCPUs × 1536 entries × (B / W).
    #[test]
    fn taking_a_quarter_of_the_working_set_flushes_a_quarter_of_every_tlb() {
        let t = spec();
        assert_eq!(t.flushed(256.0, 1024.0), 4.0 * 1536.0 / 4.0);
        assert_eq!(t.flushed(0.0, 1024.0), 0.0);
        // Never more than every entry, however much is taken from however little.
        assert_eq!(t.flushed(4096.0, 1024.0), 4.0 * 1536.0);
        assert_eq!(t.flushed(1.0, 0.0), 4.0 * 1536.0);
        assert!((t.refill_s - 60e-9).abs() < 1e-18);
    }

    #[test]
    fn bad_hardware_numbers_name_their_key() {
        let raw = |entries, vcpus, refill: &str| RawTlb {
            entries,
            vcpus,
            refill: Some(refill.parse().expect("a time")),
        };
        assert_eq!(
            raw(Some(0), None, "60ns")
                .validate()
                .expect_err("refused")
                .0,
            "entries"
        );
        assert_eq!(
            raw(None, Some(0), "60ns")
                .validate()
                .expect_err("refused")
                .0,
            "vcpus"
        );
        assert_eq!(
            raw(None, None, "0ns").validate().expect_err("refused").0,
            "refill"
        );
        assert_eq!(
            raw(None, None, "2000us").validate().expect_err("refused").0,
            "refill"
        );
        assert_eq!("1.5us".parse::<Nanos>(), Ok(Nanos(1500.0)));
        assert!("60".parse::<Nanos>().is_err());
        assert!("NaNns".parse::<Nanos>().is_err());
        assert!("-5ns".parse::<Nanos>().is_ok_and(|n| n.0 < 0.0));
    }
}
