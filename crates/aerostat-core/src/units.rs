//! Units that carry their meaning in the type: [`Bytes`] and [`Millis`].
//!
//! Both serialize as plain integers (bytes, milliseconds) so that JSON stays
//! exact and language-neutral; both parse the human forms used in TOML files
//! (`"4GiB"`, `"1.5GiB"`, `"500MiB/s"` is handled by callers, `"24h"`, `"300ms"`).
//! The grammar is small and exact on purpose (binary units only), and the core
//! stays free of dependencies beyond serde and thiserror.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A number of bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

/// 2^63: below it a float converts to and from `i64` as it would to and from `u64`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

impl Bytes {
    pub const ZERO: Bytes = Bytes(0);
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    pub const fn kib(n: u64) -> Bytes {
        Bytes(n * Self::KIB)
    }
    pub const fn mib(n: u64) -> Bytes {
        Bytes(n * Self::MIB)
    }
    pub const fn gib(n: u64) -> Bytes {
        Bytes(n * Self::GIB)
    }
    /// Converts a float number of bytes, clamping negatives and NaN to zero.
    pub fn from_f64(v: f64) -> Bytes {
        // The simulator converts millions of times a second. Below 2^63 the signed
        // conversion (one instruction on x86-64, the unsigned one takes a dozen) truncates
        // to the same integer.
        if v > 0.0 && v < TWO_POW_63 {
            Bytes(v as i64 as u64)
        } else if v.is_finite() && v > 0.0 {
            Bytes(v.min(u64::MAX as f64) as u64)
        } else {
            Bytes(0)
        }
    }
    pub fn as_f64(self) -> f64 {
        // As in `from_f64`: below 2^63 the signed conversion rounds to the same value.
        match i64::try_from(self.0) {
            Ok(v) => v as f64,
            Err(_) => self.0 as f64,
        }
    }
    pub fn as_mib_f64(self) -> f64 {
        self.0 as f64 / Self::MIB as f64
    }
    pub fn as_gib_f64(self) -> f64 {
        self.0 as f64 / Self::GIB as f64
    }
    pub fn saturating_sub(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(rhs.0))
    }
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
    pub fn saturating_add(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(rhs.0))
    }
    /// Absolute difference.
    pub fn abs_diff(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.abs_diff(rhs.0))
    }
    /// Rounds down to a multiple of `align` (which must be non-zero).
    pub fn align_down(self, align: Bytes) -> Bytes {
        debug_assert!(align.0 > 0);
        Bytes(self.0 - self.0 % align.0.max(1))
    }
    pub fn clamp_to(self, lo: Bytes, hi: Bytes) -> Bytes {
        // `hi` wins when the bounds cross: the caller's maximum is the harder limit.
        self.max(lo).min(hi)
    }
}

impl Add for Bytes {
    type Output = Bytes;
    fn add(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(rhs.0))
    }
}
impl AddAssign for Bytes {
    fn add_assign(&mut self, rhs: Bytes) {
        self.0 = self.0.saturating_add(rhs.0);
    }
}
impl Sub for Bytes {
    type Output = Bytes;
    /// Saturating: memory sizes never go negative.
    fn sub(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(rhs.0))
    }
}
impl std::iter::Sum for Bytes {
    fn sum<I: Iterator<Item = Bytes>>(iter: I) -> Bytes {
        iter.fold(Bytes::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0 as f64;
        if self.0 >= Self::GIB {
            write!(f, "{:.2} GiB", v / Self::GIB as f64)
        } else if self.0 >= Self::MIB {
            write!(f, "{:.0} MiB", v / Self::MIB as f64)
        } else if self.0 >= Self::KIB {
            write!(f, "{:.0} KiB", v / Self::KIB as f64)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

/// Why a unit string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` is not a number followed by a unit")]
    BadNumber(String),
    #[error("unknown unit `{unit}` in `{input}` (use {expected})")]
    UnknownUnit {
        input: String,
        unit: String,
        expected: &'static str,
    },
    #[error("`{0}` is out of range")]
    OutOfRange(String),
    #[error("missing unit in `{input}` (use {expected})")]
    MissingUnit {
        input: String,
        expected: &'static str,
    },
}

fn split_number(s: &str) -> Result<(f64, &str), UnitError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let num: String = num.chars().filter(|c| *c != '_').collect();
    let value: f64 = num
        .parse()
        .map_err(|_| UnitError::BadNumber(s.to_string()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(UnitError::OutOfRange(s.to_string()));
    }
    Ok((value, unit.trim()))
}

impl FromStr for Bytes {
    type Err = UnitError;
    /// Accepts `"1024"`, `"512B"`, `"64KiB"`, `"512MiB"`, `"1.5GiB"`, `"2TiB"`
    /// (also the short `K`, `M`, `G`, `T`, which mean binary units as in QEMU's `-m`).
    fn from_str(s: &str) -> Result<Bytes, UnitError> {
        let (value, unit) = split_number(s)?;
        let mult: u64 = match unit {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            other => {
                return Err(UnitError::UnknownUnit {
                    input: s.to_string(),
                    unit: other.to_string(),
                    expected: "B, KiB, MiB, GiB or TiB",
                });
            }
        };
        let bytes = value * mult as f64;
        if bytes > u64::MAX as f64 / 2.0 {
            return Err(UnitError::OutOfRange(s.to_string()));
        }
        Ok(Bytes(bytes.round() as u64))
    }
}

/// A duration or an instant, in milliseconds. The core never reads a clock:
/// every time it sees comes from an [`crate::Observation`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub const ZERO: Millis = Millis(0);
    pub const fn secs(s: u64) -> Millis {
        Millis(s * 1000)
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
    pub fn saturating_sub(self, rhs: Millis) -> Millis {
        Millis(self.0.saturating_sub(rhs.0))
    }
}

impl Add for Millis {
    type Output = Millis;
    fn add(self, rhs: Millis) -> Millis {
        Millis(self.0.saturating_add(rhs.0))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl FromStr for Millis {
    type Err = UnitError;
    /// Accepts `"300ms"`, `"2s"`, `"1.5s"`, `"10m"`, `"24h"`, `"7d"`, and sums of them as
    /// people write them: `"1h40m"`, `"1h 40m"`, `"2m30s"`. A bare number is refused: a
    /// duration without a unit is ambiguous.
    fn from_str(s: &str) -> Result<Millis, UnitError> {
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(UnitError::Empty);
        }
        let mut ms = 0.0;
        while !rest.is_empty() {
            let (value, tail) = split_number(rest).map_err(|e| match e {
                // "1h 40" or "1hx": name the whole input, not its tail.
                UnitError::BadNumber(_) | UnitError::Empty => UnitError::BadNumber(s.to_string()),
                other => other,
            })?;
            let end = tail
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(tail.len());
            let (unit, next) = tail.split_at(end);
            let mult: f64 = match unit {
                "ms" => 1.0,
                "s" => 1e3,
                "m" | "min" => 60e3,
                "h" => 3600e3,
                "d" => 86400e3,
                "" if tail.is_empty() => {
                    return Err(UnitError::MissingUnit {
                        input: s.to_string(),
                        expected: "ms, s, m, h or d, or a sum of them such as 1h30m",
                    });
                }
                other => {
                    return Err(UnitError::UnknownUnit {
                        input: s.to_string(),
                        unit: if other.is_empty() {
                            tail.to_string()
                        } else {
                            other.to_string()
                        },
                        expected: "ms, s, m, h or d, or a sum of them such as 1h30m",
                    });
                }
            };
            ms += value * mult;
            rest = next.trim_start();
        }
        if ms > 1e15 {
            return Err(UnitError::OutOfRange(s.to_string()));
        }
        Ok(Millis(ms.round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_binary_units() {
        assert_eq!("4GiB".parse::<Bytes>(), Ok(Bytes::gib(4)));
        assert_eq!("1.5GiB".parse::<Bytes>(), Ok(Bytes(3 * Bytes::GIB / 2)));
        assert_eq!("512 MiB".parse::<Bytes>(), Ok(Bytes::mib(512)));
        assert_eq!("1024".parse::<Bytes>(), Ok(Bytes(1024)));
        assert_eq!("1G".parse::<Bytes>(), Ok(Bytes::gib(1)));
    }

    #[test]
    fn refuses_bad_bytes() {
        assert!(matches!(
            "4GB".parse::<Bytes>(),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!("".parse::<Bytes>(), Err(UnitError::Empty)));
        assert!(matches!(
            "GiB".parse::<Bytes>(),
            Err(UnitError::BadNumber(_))
        ));
        assert!("-1GiB".parse::<Bytes>().is_err());
        assert!(matches!(
            "99999999999TiB".parse::<Bytes>(),
            Err(UnitError::OutOfRange(_))
        ));
    }

    #[test]
    fn parses_durations() {
        assert_eq!("24h".parse::<Millis>(), Ok(Millis(86_400_000)));
        assert_eq!("300ms".parse::<Millis>(), Ok(Millis(300)));
        assert_eq!("1.5s".parse::<Millis>(), Ok(Millis(1500)));
        assert!("10".parse::<Millis>().is_err());
        assert_eq!("1h40m".parse::<Millis>(), Ok(Millis(6_000_000)));
        assert_eq!("1h 40m".parse::<Millis>(), Ok(Millis(6_000_000)));
        assert_eq!("2m30s".parse::<Millis>(), Ok(Millis(150_000)));
        assert_eq!("1d 1.5h".parse::<Millis>(), Ok(Millis(91_800_000)));
        let e = "1h 40".parse::<Millis>().expect_err("no unit on 40");
        assert!(e.to_string().contains("`1h 40`"), "{e}");
        let e = "1h40x".parse::<Millis>().expect_err("unknown unit");
        assert!(e.to_string().contains("unknown unit `x` in `1h40x`"), "{e}");
        assert!("h".parse::<Millis>().is_err());
        assert!("1h-5m".parse::<Millis>().is_err());
    }

    proptest! {
        #[test]
        fn display_of_duration_round_trips(ms in 0u64..10_000_000_000) {
            let m = Millis(ms);
            prop_assert_eq!(m.to_string().parse::<Millis>(), Ok(m));
        }

        #[test]
        fn mib_strings_round_trip(n in 0u64..10_000_000) {
            prop_assert_eq!(format!("{n}MiB").parse::<Bytes>(), Ok(Bytes::mib(n)));
        }

        /// The fast conversions agree with the plain unsigned ones everywhere.
        #[test]
        fn float_conversions_match_unsigned_casts(bits in any::<u64>(), n in any::<u64>()) {
            let plain = |v: f64| if v.is_finite() && v > 0.0 { v.min(u64::MAX as f64) as u64 } else { 0 };
            for v in [f64::from_bits(bits), n as f64, (n >> 11) as f64 + 0.5] {
                prop_assert_eq!(Bytes::from_f64(v).0, plain(v));
            }
            prop_assert_eq!(Bytes(n).as_f64().to_bits(), (n as f64).to_bits());
            prop_assert_eq!(Bytes(n >> 1).as_f64().to_bits(), ((n >> 1) as f64).to_bits());
        }
    }

    #[test]
    fn float_conversion_edges() {
        for v in [
            0.0,
            -0.0,
            -1.0,
            0.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            TWO_POW_63,
            TWO_POW_63 - 1024.0,
            u64::MAX as f64,
            1e30,
        ] {
            let plain = if v.is_finite() && v > 0.0 {
                v.min(u64::MAX as f64) as u64
            } else {
                0
            };
            assert_eq!(Bytes::from_f64(v).0, plain, "{v}");
        }
        for n in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(Bytes(n).as_f64().to_bits(), (n as f64).to_bits(), "{n}");
        }
    }
}
