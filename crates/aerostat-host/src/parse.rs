//! Line parsers for the kernel's text formats. All take `&str` plus the path they came from
//! (for errors), so tests feed them real sample text.

use std::collections::HashMap;
use std::path::Path;

use crate::error::HostError;

/// How a file separates keys from values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `/proc/meminfo`: `Key:   123 kB` (kB means KiB) or `Key:   123`.
    Meminfo,
    /// `/proc/vmstat`, cgroup `memory.stat`, `memory.events`, `memory.oom_control`: `key 123`.
    Flat,
}

/// The values of the `wanted` keys. A wanted key whose value does not parse is an error naming
/// the line; other lines are not looked at, so new kernel fields never break us. The first
/// occurrence of a key wins.
pub(crate) fn keyed<'a>(
    text: &str,
    path: &Path,
    format: Format,
    wanted: &[&'a str],
) -> Result<HashMap<&'a str, u64>, HostError> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let (key, rest) = match format {
            Format::Meminfo => match line.split_once(':') {
                Some((k, r)) => (k.trim(), r.trim()),
                None => continue,
            },
            Format::Flat => match line.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim()),
                None => continue,
            },
        };
        let Some(&wanted_key) = wanted.iter().find(|w| **w == key) else {
            continue;
        };
        if out.contains_key(wanted_key) {
            continue;
        }
        let value = match format {
            Format::Meminfo => parse_meminfo_value(rest),
            Format::Flat => rest.parse::<u64>().ok(),
        }
        .ok_or_else(|| {
            HostError::parse(
                path,
                i + 1,
                format!("`{key}`: cannot read `{rest}` as a size"),
            )
        })?;
        out.insert(wanted_key, value);
    }
    Ok(out)
}

fn parse_meminfo_value(s: &str) -> Option<u64> {
    match s.strip_suffix("kB") {
        Some(n) => n.trim().parse::<u64>().ok()?.checked_mul(1024),
        None => s.parse().ok(),
    }
}

/// Takes a required key out of a [`keyed`] result.
pub(crate) fn need(
    map: &HashMap<&str, u64>,
    key: &'static str,
    path: &Path,
) -> Result<u64, HostError> {
    map.get(key).copied().ok_or_else(|| HostError::Missing {
        path: path.to_path_buf(),
        key,
    })
}

/// A single-number file (`memory.current`, `memory.usage_in_bytes`). `max` (cgroup v2's
/// "no limit") is `None`.
pub(crate) fn single_value(text: &str, path: &Path) -> Result<Option<u64>, HostError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse::<u64>()
        .map(Some)
        .map_err(|_| HostError::parse(path, 1, format!("expected a number or `max`, got `{t}`")))
}

/// Cumulative stall times from a PSI file (`/proc/pressure/memory`, cgroup v2
/// `memory.pressure`): `some avg10=0.00 avg60=0.00 avg300=0.00 total=123`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    /// Microseconds in which at least one task stalled on memory.
    pub some_total_us: Option<u64>,
    /// Microseconds in which all non-idle tasks stalled at once.
    pub full_total_us: Option<u64>,
}

/// Parses a PSI file. Both lines are optional (old kernels lack `full` for some resources);
/// a present line without a readable `total=` is an error naming the line.
pub fn parse_pressure(text: &str, path: &Path) -> Result<Pressure, HostError> {
    let mut p = Pressure::default();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let slot = match fields.next() {
            Some("some") => &mut p.some_total_us,
            Some("full") => &mut p.full_total_us,
            _ => continue,
        };
        let total = fields
            .find_map(|f| f.strip_prefix("total="))
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| HostError::parse(path, i + 1, "no readable `total=` field"))?;
        *slot = Some(total);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "/test";

    #[test]
    fn meminfo_values() {
        let m = keyed(
            "MemTotal:       24684096 kB\nHugePages_Total:       0\nOdd line\n",
            Path::new(P),
            Format::Meminfo,
            &["MemTotal", "HugePages_Total"],
        )
        .expect("parses");
        assert_eq!(m["MemTotal"], 24684096 * 1024);
        assert_eq!(m["HugePages_Total"], 0);
    }

    #[test]
    fn bad_wanted_line_names_the_line() {
        let e = keyed(
            "MemTotal: 1 kB\nMemFree: lots kB\n",
            Path::new(P),
            Format::Meminfo,
            &["MemFree"],
        )
        .expect_err("bad value");
        assert_eq!(
            e.to_string(),
            "/test:2: `MemFree`: cannot read `lots kB` as a size"
        );
        // The same garbage in a line nobody asked for is ignored.
        assert!(
            keyed(
                "MemFree: lots kB\n",
                Path::new(P),
                Format::Meminfo,
                &["MemTotal"]
            )
            .is_ok()
        );
    }

    #[test]
    fn overflowing_kib_is_an_error() {
        let text = format!("MemTotal: {} kB\n", u64::MAX);
        assert!(keyed(&text, Path::new(P), Format::Meminfo, &["MemTotal"]).is_err());
    }

    #[test]
    fn single_values() {
        assert_eq!(single_value("max\n", Path::new(P)).expect("max"), None);
        assert_eq!(
            single_value("268435456\n", Path::new(P)).expect("n"),
            Some(268435456)
        );
        assert!(single_value("-1\n", Path::new(P)).is_err());
        assert!(single_value("", Path::new(P)).is_err());
    }

    #[test]
    fn pressure_lines() {
        let p = parse_pressure(
            "some avg10=0.00 avg60=0.12 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=56\n",
            Path::new(P),
        )
        .expect("parses");
        assert_eq!(p.some_total_us, Some(1234));
        assert_eq!(p.full_total_us, Some(56));
        let only_some = parse_pressure(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
            Path::new(P),
        )
        .expect("parses");
        assert_eq!(only_some.full_total_us, None);
        assert!(parse_pressure("some avg10=0.00\n", Path::new(P)).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "(?s).{0,400}") {
            let _ = keyed(&text, Path::new(P), Format::Meminfo, &["MemTotal", "MemFree"]);
            let _ = keyed(&text, Path::new(P), Format::Flat, &["pswpin", "oom_kill"]);
            let _ = single_value(&text, Path::new(P));
            let _ = parse_pressure(&text, Path::new(P));
        }

        #[test]
        fn flat_round_trip(key in "[a-z_]{1,12}", n in any::<u64>()) {
            let text = format!("other 1\n{key} {n}\n");
            let m = keyed(&text, Path::new(P), Format::Flat, &[key.as_str()]).expect("parses");
            let expected = if key == "other" { 1 } else { n };
            prop_assert_eq!(m[key.as_str()], expected);
        }
    }
}
