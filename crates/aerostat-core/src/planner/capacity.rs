//! Capacity math: how far a host can overcommit before swap I/O eats its disk.
//!
//! The *working-set deficit* model. Each VM needs some memory resident on the host to run
//! without stalls: its hot working set, the hot part of its page cache, its guest kernel and
//! QEMU's overhead (its **need**). The host can give its guests `U` = RAM − reserve
//! (**usable**). With the overcommit ratio `R` = Σ configured ÷ `U` and the fleet's
//! working-set fraction `w` = Σ need ÷ Σ configured, the guests need `R·w·U`; what does not
//! fit is the **deficit**
//!
//! ```text
//! D(R) = max(0, R·w·U − U)
//! ```
//!
//! This assumes the memory is *pooled*: a balloon policy moves memory to whoever needs it, so
//! only the fleet-wide shortfall matters (a host with static per-VM limits does worse). Hot
//! pages that are not resident are re-touched at `a` of the missing part per second, and in
//! steady state every page read back pushes another one out, so the deficit costs
//! `k = 2a` bytes per second of swap I/O per byte (reads plus writes):
//!
//! ```text
//! IO(R) = k · D(R)            safe while IO(R) ≤ f · B
//! R_max = (U + f·B/k) / (w·U)
//! ```
//!
//! with `B` the swap device's bandwidth and `f` the fraction of it that may go to swap
//! before everything else on the disk (and every guest waiting on a fault) suffers. The
//! defaults: `a` = 0.1/s (the simulator's `HOT_ACCESS_PER_S`), so `k` = 0.2/s — one GiB of
//! deficit costs about 205 MiB/s — and `f` = 0.5.
//!
//! `R_max` is the closed form for a continuous fleet of a fixed mix. Real fleets come in
//! whole VMs: [`CapacityInputs::max_safe_fleet`] finds the largest fleet whose counts are the
//! scenario's counts scaled by one factor `s` and rounded per group — in closed form for a
//! homogeneous fleet (one kind of VM), by bisection over `s` otherwise (the counts, hence the
//! deficit, never decrease as `s` grows, so the safe set is an interval).
//!
//! Pure: no clock, no I/O; every number is an input.

use std::fmt;

use serde::Serialize;

use crate::units::Bytes;

/// Fraction of a missing hot set the guest re-touches (and faults back) per second; the
/// simulator's `HOT_ACCESS_PER_S`.
pub const DEFAULT_RETOUCH_PER_S: f64 = 0.1;
/// Swap I/O per byte of deficit per second: one read per re-touch, plus one write for the
/// page the read pushes out.
pub const DEFAULT_SWAP_IO_PER_DEFICIT: f64 = 2.0 * DEFAULT_RETOUCH_PER_S;
/// Fraction of the swap device's bandwidth that swap may use and stay safe.
pub const DEFAULT_SAFE_FRACTION: f64 = 0.5;
/// Bisection never scales a fleet beyond this many VMs (the simulator's own limit).
pub const MAX_FLEET_VMS: u64 = 10_000;

/// One kind of VM in the fleet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmGroup {
    pub name: String,
    pub count: u32,
    /// Configured (maximum) guest memory of one VM.
    pub configured: Bytes,
    /// Memory one VM needs resident to run without stalls: hot working set, hot page cache,
    /// guest kernel, QEMU overhead.
    pub need: Bytes,
}

/// Everything the model reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityInputs {
    /// Host RAM minus the reserve.
    pub usable: Bytes,
    pub groups: Vec<VmGroup>,
    /// `k`: bytes per second of swap I/O caused by one byte of deficit.
    pub swap_io_per_deficit: f64,
    /// `B`, bytes per second.
    pub swap_bandwidth: Bytes,
    /// `f`, in (0, 1].
    pub safe_fraction: f64,
}

/// Inputs the model cannot work with; names the field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CapacityError {
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// A number and the one line that explains where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub explanation: String,
}

/// The largest whole fleet that stays safe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fleet {
    /// Scale factor over the input counts.
    pub scale: f64,
    /// One count per group, in input order.
    pub counts: Vec<u32>,
    pub vms: u64,
    pub ratio: f64,
    /// Bytes.
    pub deficit: f64,
    /// Bytes per second.
    pub swap_io: f64,
    /// `closed form` or `bisection`.
    pub method: &'static str,
    pub explanation: String,
}

/// Bytes per second, printed like `250 MiB/s`.
struct Rate(f64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", Bytes::from_f64(self.0))
    }
}

impl CapacityInputs {
    /// Checks that every input is in range and the fleet has memory to overcommit.
    pub fn validate(&self) -> Result<(), CapacityError> {
        let bad = |field: &'static str, message: &str| {
            Err(CapacityError::Invalid {
                field,
                message: message.to_string(),
            })
        };
        if self.usable == Bytes::ZERO {
            return bad("usable", "host memory minus reserve must be positive");
        }
        if self.configured_total() <= 0.0 {
            return bad("groups", "the fleet has no configured memory");
        }
        if self.swap_bandwidth == Bytes::ZERO {
            return bad("swap_bandwidth", "must be positive");
        }
        if !(self.safe_fraction > 0.0 && self.safe_fraction <= 1.0) {
            return bad("safe_fraction", "must be in (0, 1]");
        }
        if !(self.swap_io_per_deficit.is_finite() && self.swap_io_per_deficit > 0.0) {
            return bad("swap_io_per_deficit", "must be positive");
        }
        Ok(())
    }

    /// Σ configured at the input counts, bytes.
    pub fn configured_total(&self) -> f64 {
        self.groups
            .iter()
            .map(|g| f64::from(g.count) * g.configured.as_f64())
            .sum()
    }

    /// Σ need at the input counts, bytes.
    pub fn need_total(&self) -> f64 {
        self.groups
            .iter()
            .map(|g| f64::from(g.count) * g.need.as_f64())
            .sum()
    }

    /// `w` = Σ need ÷ Σ configured.
    pub fn working_set_fraction(&self) -> f64 {
        self.need_total() / self.configured_total()
    }

    /// The input fleet's own ratio, Σ configured ÷ usable.
    pub fn ratio(&self) -> f64 {
        self.configured_total() / self.usable.as_f64()
    }

    /// `f·B`, bytes per second.
    pub fn safe_io(&self) -> f64 {
        self.safe_fraction * self.swap_bandwidth.as_f64()
    }

    fn deficit_bytes(&self, ratio: f64) -> f64 {
        let u = self.usable.as_f64();
        (ratio * self.working_set_fraction() * u - u).max(0.0)
    }

    /// `D(R)`, bytes.
    pub fn deficit(&self, ratio: f64) -> Estimate {
        let u = self.usable.as_f64();
        let w = self.working_set_fraction();
        let d = self.deficit_bytes(ratio);
        Estimate {
            value: d,
            explanation: format!(
                "at R={ratio:.2} the guests need R·w·U = {ratio:.2} × {w:.3} × {} = {} of {} usable: deficit {}",
                Bytes::from_f64(u),
                Bytes::from_f64(ratio * w * u),
                Bytes::from_f64(u),
                Bytes::from_f64(d)
            ),
        }
    }

    /// `IO(R)`, bytes per second.
    pub fn swap_io(&self, ratio: f64) -> Estimate {
        let d = self.deficit_bytes(ratio);
        let io = self.swap_io_per_deficit * d;
        Estimate {
            value: io,
            explanation: format!(
                "deficit {} × k {:.3}/s = {} of swap I/O; safe limit f·B = {:.0} % × {} = {}",
                Bytes::from_f64(d),
                self.swap_io_per_deficit,
                Rate(io),
                100.0 * self.safe_fraction,
                Rate(self.swap_bandwidth.as_f64()),
                Rate(self.safe_io())
            ),
        }
    }

    /// `R_max = (U + f·B/k) / (w·U)`.
    pub fn r_max(&self) -> Estimate {
        let u = self.usable.as_f64();
        let w = self.working_set_fraction();
        let slack = self.safe_io() / self.swap_io_per_deficit;
        let r = (u + slack) / (w * u);
        Estimate {
            value: r,
            explanation: format!(
                "R_max = (U + f·B/k) / (w·U) = ({} + {} ÷ {:.3}/s) / ({w:.3} × {}) = {r:.3}: \
                 beyond it the deficit exceeds {} and swap I/O exceeds {}",
                Bytes::from_f64(u),
                Rate(self.safe_io()),
                self.swap_io_per_deficit,
                Bytes::from_f64(u),
                Bytes::from_f64(slack),
                Rate(self.safe_io())
            ),
        }
    }

    /// The counts at scale `s`: each group's count × `s`, rounded to the nearest whole VM
    /// (halves up). Never decreases as `s` grows.
    pub fn scaled_counts(&self, scale: f64) -> Vec<u32> {
        self.groups
            .iter()
            .map(|g| {
                let c = (f64::from(g.count) * scale.max(0.0) + 0.5).floor();
                c.min(f64::from(u32::MAX)) as u32
            })
            .collect()
    }

    /// (Σ configured, Σ need) in bytes for these counts.
    fn totals(&self, counts: &[u32]) -> (f64, f64) {
        self.groups
            .iter()
            .zip(counts)
            .fold((0.0, 0.0), |(c, n), (g, &k)| {
                (
                    c + f64::from(k) * g.configured.as_f64(),
                    n + f64::from(k) * g.need.as_f64(),
                )
            })
    }

    /// The ratio, deficit (bytes) and swap I/O (bytes/s) of a whole fleet with these counts
    /// (one per group, in input order).
    pub fn at_counts(&self, counts: &[u32]) -> (f64, f64, f64) {
        let (configured, need) = self.totals(counts);
        let deficit = (need - self.usable.as_f64()).max(0.0);
        (
            configured / self.usable.as_f64(),
            deficit,
            self.swap_io_per_deficit * deficit,
        )
    }

    fn io_of(&self, counts: &[u32]) -> f64 {
        self.at_counts(counts).2
    }

    fn fleet(&self, scale: f64, method: &'static str) -> Fleet {
        let counts = self.scaled_counts(scale);
        let (configured, need) = self.totals(&counts);
        let deficit = (need - self.usable.as_f64()).max(0.0);
        let swap_io = self.swap_io_per_deficit * deficit;
        let vms: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        let ratio = configured / self.usable.as_f64();
        let list: Vec<String> = self
            .groups
            .iter()
            .zip(&counts)
            .map(|(g, c)| format!("{c} × {}", g.name))
            .collect();
        Fleet {
            scale,
            vms,
            ratio,
            deficit,
            swap_io,
            method,
            explanation: format!(
                "{method}: {} ({vms} VMs, R={ratio:.3}) need {} of {} usable, deficit {}, swap I/O {} ≤ {}; one more step of the fleet would not be safe",
                list.join(" + "),
                Bytes::from_f64(need),
                self.usable,
                Bytes::from_f64(deficit),
                Rate(swap_io),
                Rate(self.safe_io())
            ),
            counts,
        }
    }

    /// The largest whole fleet (the input counts scaled by one factor and rounded per group)
    /// whose swap I/O stays within `f·B`. Closed form for one kind of VM, bisection otherwise.
    pub fn max_safe_fleet(&self) -> Fleet {
        let limit = self.usable.as_f64() + self.safe_io() / self.swap_io_per_deficit;
        let live: Vec<&VmGroup> = self.groups.iter().filter(|g| g.count > 0).collect();
        if let [g] = live.as_slice()
            && g.need.as_f64() > 0.0
        {
            // Homogeneous: n·need ≤ U + f·B/k.
            let n = ((limit / g.need.as_f64()).floor() as u64).min(MAX_FLEET_VMS);
            // The scale whose rounding gives exactly n.
            let scale = n as f64 / f64::from(g.count);
            return self.fleet(scale, "closed form");
        }
        let total: u64 = self.groups.iter().map(|g| u64::from(g.count)).sum();
        let safe = |s: f64| {
            let counts = self.scaled_counts(s);
            let vms: u64 = counts.iter().map(|&c| u64::from(c)).sum();
            vms <= MAX_FLEET_VMS && self.io_of(&counts) <= self.safe_io()
        };
        let mut lo = 0.0;
        let mut hi = 1.0;
        while safe(hi) && (hi * total as f64) < MAX_FLEET_VMS as f64 {
            lo = hi;
            hi *= 2.0;
        }
        if safe(hi) {
            lo = hi;
        } else {
            for _ in 0..64 {
                let mid = 0.5 * (lo + hi);
                if safe(mid) { lo = mid } else { hi = mid }
            }
        }
        self.fleet(lo, "bisection")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one_kind(count: u32, configured_gib: u64, need_gib: f64) -> CapacityInputs {
        CapacityInputs {
            usable: Bytes::gib(60),
            groups: vec![VmGroup {
                name: "web".into(),
                count,
                configured: Bytes::gib(configured_gib),
                need: Bytes::from_f64(need_gib * Bytes::GIB as f64),
            }],
            swap_io_per_deficit: DEFAULT_SWAP_IO_PER_DEFICIT,
            swap_bandwidth: Bytes::mib(512),
            safe_fraction: DEFAULT_SAFE_FRACTION,
        }
    }

    #[test]
    fn hand_computed_r_max() {
        // U = 60 GiB, w = 3/6 = 0.5, f·B = 256 MiB/s, k = 0.2/s → slack 1.25 GiB.
        // R_max = (60 + 1.25) / (0.5 × 60) = 2.041666...
        let m = one_kind(10, 6, 3.0);
        assert!((m.working_set_fraction() - 0.5).abs() < 1e-12);
        assert!((m.r_max().value - 61.25 / 30.0).abs() < 1e-9);
        assert!(m.r_max().explanation.starts_with("R_max = "));
    }

    #[test]
    fn hand_computed_deficit_and_io() {
        let m = one_kind(10, 6, 3.0);
        // R = 2.5: need 2.5 × 0.5 × 60 = 75 GiB, deficit 15 GiB, I/O 3 GiB/s.
        let d = m.deficit(2.5);
        assert!((d.value - 15.0 * Bytes::GIB as f64).abs() < 1.0);
        let io = m.swap_io(2.5);
        assert!((io.value - 3.0 * Bytes::GIB as f64).abs() < 1.0);
        assert!(io.explanation.contains("safe limit"));
        // R = 2: need exactly U, no deficit.
        assert_eq!(m.deficit(2.0).value, 0.0);
    }

    #[test]
    fn homogeneous_fleet_in_closed_form() {
        // limit = 61.25 GiB, need 3 GiB each → 20 VMs (R = 20 × 6 / 60 = 2.0).
        let f = one_kind(10, 6, 3.0).max_safe_fleet();
        assert_eq!(f.method, "closed form");
        assert_eq!(f.counts, vec![20]);
        assert!((f.ratio - 2.0).abs() < 1e-12);
        assert!(f.swap_io <= 256.0 * Bytes::MIB as f64);
    }

    #[test]
    fn bisection_agrees_with_closed_form_on_split_groups() {
        // The same fleet described as two identical groups goes through bisection.
        let mut m = one_kind(5, 6, 3.0);
        let mut g = m.groups[0].clone();
        g.name = "web2".into();
        m.groups.push(g);
        let f = m.max_safe_fleet();
        assert_eq!(f.method, "bisection");
        assert_eq!(f.vms, 20);
    }

    #[test]
    fn bisection_on_a_mixed_fleet_is_the_last_safe_step() {
        let mut m = one_kind(4, 6, 3.0);
        m.groups.push(VmGroup {
            name: "db".into(),
            count: 2,
            configured: Bytes::gib(16),
            need: Bytes::gib(12),
        });
        let f = m.max_safe_fleet();
        assert!(f.swap_io <= m.safe_io());
        // A slightly larger scale adds a VM and is unsafe.
        let mut s = f.scale;
        loop {
            s *= 1.0001;
            let c = m.scaled_counts(s);
            if c != f.counts {
                assert!(m.io_of(&c) > m.safe_io());
                break;
            }
        }
    }

    #[test]
    fn validate_names_the_field() {
        let mut m = one_kind(1, 6, 3.0);
        m.safe_fraction = 0.0;
        assert!(matches!(
            m.validate(),
            Err(CapacityError::Invalid {
                field: "safe_fraction",
                ..
            })
        ));
        m.safe_fraction = 0.5;
        assert!(m.validate().is_ok());
    }

    proptest! {
        #[test]
        fn r_max_monotone_in_bandwidth(
            mib in 1u64..10_000, more in 0u64..10_000, need in 0.1f64..6.0, n in 1u32..50,
        ) {
            let mut a = one_kind(n, 6, need);
            a.swap_bandwidth = Bytes::mib(mib);
            let mut b = a.clone();
            b.swap_bandwidth = Bytes::mib(mib + more);
            prop_assert!(b.r_max().value >= a.r_max().value);
            prop_assert!(b.max_safe_fleet().vms >= a.max_safe_fleet().vms);
        }

        #[test]
        fn r_max_non_increasing_in_working_set_fraction(
            need in 0.1f64..6.0, more in 0.0f64..6.0, n in 1u32..50,
        ) {
            let a = one_kind(n, 12, need);
            let b = one_kind(n, 12, need + more);
            prop_assert!(b.working_set_fraction() >= a.working_set_fraction());
            prop_assert!(b.r_max().value <= a.r_max().value);
        }

        #[test]
        fn no_deficit_while_needs_fit(
            need in 0.1f64..6.0, n in 1u32..50, r in 0.0f64..5.0,
        ) {
            let m = one_kind(n, 6, need);
            let needed = r * m.working_set_fraction() * m.usable.as_f64();
            if needed <= m.usable.as_f64() {
                prop_assert_eq!(m.deficit(r).value, 0.0);
                prop_assert_eq!(m.swap_io(r).value, 0.0);
            } else {
                prop_assert!(m.deficit(r).value > 0.0);
            }
        }

        #[test]
        fn bisection_result_is_safe(
            n1 in 1u32..20, n2 in 1u32..20, need1 in 0.5f64..6.0, need2 in 0.5f64..16.0,
        ) {
            let mut m = one_kind(n1, 6, need1);
            m.groups.push(VmGroup {
                name: "db".into(),
                count: n2,
                configured: Bytes::gib(16),
                need: Bytes::from_f64(need2 * Bytes::GIB as f64),
            });
            let f = m.max_safe_fleet();
            prop_assert!(f.swap_io <= m.safe_io() + 1e-6);
        }
    }
}
