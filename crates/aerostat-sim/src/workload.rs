//! Workloads: what a guest's applications want, as a pure function of time.
//!
//! A workload gives the guest's *demand*: hot anonymous memory (touched all the time),
//! cold anonymous memory (allocated and then left alone: leaks, idle caches in the
//! heap), and page cache, a `cache_hot` fraction of which is re-read. Noise is value
//! noise from a hash of (seed, VM, time bucket), so it is the same on every machine
//! and thread count and needs no random-number state.

use std::f64::consts::PI;
use std::path::Path;

use aerostat_core::{Bytes, Millis};

use crate::input::shorten;
use crate::scenario::{WorkloadKind, WorkloadSpec};

/// What the guest's applications want at one instant, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    pub hot_anon: f64,
    pub cold_anon: f64,
    pub cache: f64,
    pub hot_cache: f64,
}

/// SplitMix64: a well-known 64-bit mixing function, used as a stateless hash for noise.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform in [-1, 1), a pure function of its inputs.
pub(crate) fn unit_noise(seed: u64, stream: u64, bucket: u64) -> f64 {
    let h = splitmix64(seed ^ splitmix64(stream ^ splitmix64(bucket)));
    (h >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// Noise buckets are five minutes apart; values between are interpolated linearly.
const NOISE_BUCKET_MS: u64 = 300_000;

/// Smooth noise in [-1, 1].
pub fn smooth_noise(seed: u64, stream: u64, t: Millis) -> f64 {
    NoiseBucket::new(seed, stream, t.0 / NOISE_BUCKET_MS).at(t)
}

/// The noise at both ends of one bucket: hashed once per bucket, not once per tick.
#[derive(Clone, Copy, Debug)]
struct NoiseBucket {
    k: u64,
    a: f64,
    b: f64,
}

impl NoiseBucket {
    fn new(seed: u64, stream: u64, k: u64) -> NoiseBucket {
        NoiseBucket {
            k,
            a: unit_noise(seed, stream, k),
            b: unit_noise(seed, stream, k + 1),
        }
    }

    /// The noise at `t`, which must lie in this bucket.
    fn at(&self, t: Millis) -> f64 {
        let frac = (t.0 % NOISE_BUCKET_MS) as f64 / NOISE_BUCKET_MS as f64;
        self.a + (self.b - self.a) * frac
    }
}

/// The last value of the diurnal shape, `cos(2πx)`. Replicas of a group share `t`, phase and
/// period, so the engine passes one memo to all guests in a tick and the cosine (a tenth of
/// a fleet run's time) is computed once per group: the same input gives the same bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShapeMemo {
    last: Option<(u64, f64)>,
}

impl ShapeMemo {
    fn cos_2pi(&mut self, x: f64) -> f64 {
        match self.last {
            Some((bits, value)) if bits == x.to_bits() => value,
            _ => {
                let value = (2.0 * PI * x).cos();
                self.last = Some((x.to_bits(), value));
                value
            }
        }
    }
}

/// A workload bound to one VM.
#[derive(Clone, Debug)]
pub struct Workload {
    spec: WorkloadSpec,
    seed: u64,
    stream: u64,
    /// The bucket of the last noise read.
    noise: NoiseBucket,
    /// The spec's sizes in f64 bytes, converted once: `demand` runs every VM-tick.
    sizes: Sizes,
}

/// [`WorkloadSpec`] sizes as `f64` bytes.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    working_set: f64,
    peak: f64,
    page_cache: f64,
    cold: f64,
}

impl Workload {
    pub fn new(spec: WorkloadSpec, seed: u64, stream: u64) -> Workload {
        let sizes = Sizes {
            working_set: spec.working_set.as_f64(),
            peak: spec.peak.as_f64(),
            page_cache: spec.page_cache.as_f64(),
            cold: spec.cold.as_f64(),
        };
        Workload {
            spec,
            seed,
            stream,
            noise: NoiseBucket::new(seed, stream, 0),
            sizes,
        }
    }

    /// [`smooth_noise`] at `t`, rehashing only when `t` enters another bucket.
    fn noise(&mut self, t: Millis) -> f64 {
        let k = t.0 / NOISE_BUCKET_MS;
        if k != self.noise.k {
            self.noise = NoiseBucket::new(self.seed, self.stream, k);
        }
        self.noise.at(t)
    }

    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// Demand at `t` (time since the VM started).
    pub fn demand(&mut self, t: Millis, shape: &mut ShapeMemo) -> Demand {
        let noise = self.noise(t);
        let s = &self.spec;
        let ws = self.sizes.working_set;
        let peak = self.sizes.peak;
        let mut cache = self.sizes.page_cache;
        let mut cold = self.sizes.cold;
        let hot = match s.kind {
            WorkloadKind::Steady | WorkloadKind::Idle => ws,
            WorkloadKind::Diurnal => {
                let x = (t.0 + s.phase.0) as f64 / s.period.0 as f64;
                ws + (peak - ws) * 0.5 * (1.0 - shape.cos_2pi(x))
            }
            WorkloadKind::Burst => {
                let (at, rise, hold) = (s.at.0, s.rise.0.max(1), s.hold.0);
                let now = t.0;
                let frac = if now < at {
                    0.0
                } else if now < at + rise {
                    (now - at) as f64 / rise as f64
                } else if now < at + rise + hold {
                    1.0
                } else if now < at + 2 * rise + hold {
                    1.0 - (now - at - rise - hold) as f64 / rise as f64
                } else {
                    0.0
                };
                ws + (peak - ws) * frac
            }
            WorkloadKind::Ramp => {
                let (at, rise) = (s.at.0, s.rise.0.max(1));
                let frac = if t.0 < at {
                    0.0
                } else {
                    ((t.0 - at) as f64 / rise as f64).min(1.0)
                };
                ws + (peak - ws) * frac
            }
            WorkloadKind::Leak => {
                cold += s.leak_per_hour.as_f64() * t.0 as f64 / 3_600_000.0;
                ws
            }
            WorkloadKind::Boot => {
                if t < s.hold {
                    peak
                } else {
                    ws
                }
            }
            WorkloadKind::Phases => {
                // The last phase begun by `t` (the first before any): the points are in
                // strictly increasing time, so a binary search finds it among thousands.
                let begun = s.points.partition_point(|p| p.0 <= t);
                let p = &s.points[begun.saturating_sub(1)];
                cache = p.2.as_f64();
                p.1.as_f64()
            }
            WorkloadKind::Trace => {
                let (w, c) = interpolate(&s.points, t);
                cache = c;
                w
            }
        };
        let noisy = hot * (1.0 + s.noise * noise);
        Demand {
            hot_anon: noisy.max(0.0),
            cold_anon: cold,
            cache,
            hot_cache: cache * s.cache_hot,
        }
    }
}

fn interpolate(points: &[(Millis, Bytes, Bytes)], t: Millis) -> (f64, f64) {
    let i = points.partition_point(|p| p.0 <= t);
    if i == 0 {
        return (points[0].1.as_f64(), points[0].2.as_f64());
    }
    if i == points.len() {
        let p = points[i - 1];
        return (p.1.as_f64(), p.2.as_f64());
    }
    let (a, b) = (points[i - 1], points[i]);
    let f = (t.0 - a.0.0) as f64 / (b.0.0 - a.0.0).max(1) as f64;
    (
        a.1.as_f64() + (b.1.as_f64() - a.1.as_f64()) * f,
        a.2.as_f64() + (b.2.as_f64() - a.2.as_f64()) * f,
    )
}

/// Largest trace accepted, in rows: a trace is replayed from memory.
pub const MAX_TRACE_ROWS: usize = 10_000_000;

/// Reads a trace CSV: a header line, then `time_s,working_set_mib,page_cache_mib` rows in
/// increasing time. Errors name the file and line.
/// The largest trace file read (256 MiB: ten million rows of a few dozen bytes).
pub const MAX_TRACE_BYTES: u64 = 256 << 20;

pub fn load_trace(path: &Path, usable: Bytes) -> Result<Vec<(Millis, Bytes, Bytes)>, String> {
    // A regular file of bounded size: a device (`/dev/zero`) or a FIFO would be read
    // without end.
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read trace {}: {e}", display_path(path)))?;
    if !meta.is_file() {
        return Err(format!(
            "trace {} is not a regular file",
            display_path(path)
        ));
    }
    if meta.len() > MAX_TRACE_BYTES {
        return Err(format!(
            "trace {} is {} bytes, more than the {MAX_TRACE_BYTES} a trace may have",
            display_path(path),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read trace {}: {e}", display_path(path)))?;
    // Spreadsheets save CSV with a byte-order mark, invisible in the error it would cause.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = line.trim();
        // Comments and blank lines anywhere; the header (`time_s,…`) before the first row,
        // after any comments.
        if line.is_empty()
            || line.starts_with('#')
            || (points.is_empty() && line.starts_with("time"))
        {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |what: &str| format!("{}:{lineno}: {what}", path.display());
        if fields.len() < 2 || fields.len() > 3 {
            return Err(bad(
                "expected time_s,working_set_mib[,page_cache_mib] (a header, if any, must be the first line that is not a comment)",
            ));
        }
        let num = |s: &str, name: &str| -> Result<f64, String> {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    bad(&format!(
                        "{name} `{}` is not a non-negative number",
                        shorten(s)
                    ))
                })
        };
        let t = num(fields[0], "time_s")?;
        let ws = num(fields[1], "working_set_mib")?;
        let pc = if fields.len() == 3 {
            num(fields[2], "page_cache_mib")?
        } else {
            0.0
        };
        let secs = t;
        let t = Millis((t * 1000.0) as u64);
        if points
            .last()
            .is_some_and(|p: &(Millis, Bytes, Bytes)| p.0 >= t)
        {
            // Times are kept in whole milliseconds (up to ~584 million years).
            return Err(bad(&format!(
                "times must increase by at least 1 ms (time_s {secs:?} is not after the row before, in whole milliseconds)"
            )));
        }
        let (ws, pc) = (
            Bytes::from_f64(ws * Bytes::MIB as f64),
            Bytes::from_f64(pc * Bytes::MIB as f64),
        );
        if ws > usable {
            return Err(bad(&format!(
                "working set {ws} is above usable memory {usable} (memory less the guest kernel and pinned memory)"
            )));
        }
        if pc > usable {
            return Err(bad(&format!(
                "page cache {pc} is above usable memory {usable}: it could never be resident"
            )));
        }
        points.push((t, ws, pc));
        if points.len() > MAX_TRACE_ROWS {
            return Err(bad("trace too long"));
        }
    }
    if points.is_empty() {
        return Err(format!("{}: trace has no rows", path.display()));
    }
    Ok(points)
}

/// `path` as given and, when relative, the absolute path it stands for here.
fn display_path(path: &Path) -> String {
    match std::path::absolute(path) {
        Ok(abs) if abs != path => format!("{} ({})", path.display(), abs.display()),
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_bounded_and_pure() {
        for t in (0..10_000_000).step_by(7_777) {
            let n = smooth_noise(7, 3, Millis(t));
            assert!((-1.0..=1.0).contains(&n));
            assert_eq!(n, smooth_noise(7, 3, Millis(t)));
        }
        assert_ne!(smooth_noise(7, 3, Millis(0)), smooth_noise(8, 3, Millis(0)));
    }

    /// Replicas share one copy of their phases (or trace), and the phase in force is the
    /// last one begun, found by binary search (session 34: a 1M-row trace was held once per
    /// replica, 100 replicas ran out of 6 GB; 100,000 phases were scanned every tick).
    #[test]
    fn replicas_share_their_phases_and_the_last_phase_begun_is_in_force() {
        let text = "[scenario]\nname = \"p\"\nduration = \"1h\"\nseed = 1\n[host]\nmemory = \"64GiB\"\n\
                    reserve = \"1GiB\"\n[[vm]]\nname = \"v\"\ncount = 3\nmemory = \"4GiB\"\n[vm.workload]\n\
                    kind = \"phases\"\nnoise = 0.0\nphases = [{ at = \"0s\", working_set = \"1GiB\" }, \
                    { at = \"10m\", working_set = \"2GiB\" }, { at = \"20m\", working_set = \"1536MiB\" }]\n";
        let sc = crate::Scenario::parse(text, std::path::Path::new("p.toml")).expect("valid");
        let points = |i: usize| &sc.vms[i].workload.points;
        assert!(std::sync::Arc::ptr_eq(points(0), points(2)));
        let mut w = Workload::new(sc.vms[0].workload.clone(), 1, 0);
        let mut shape = ShapeMemo::default();
        for (t, mib) in [
            (0u64, 1024u64),
            (599, 1024),
            (600, 2048),
            (1199, 2048),
            (1200, 1536),
            (3599, 1536),
        ] {
            let d = w.demand(Millis::secs(t), &mut shape);
            assert_eq!(d.hot_anon, (mib << 20) as f64, "at {t} s");
        }
    }

    #[test]
    fn trace_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("t.csv");
        std::fs::write(&f, "time_s,ws,pc\n0,100,10\n5,abc,1\n").expect("write");
        let e = load_trace(&f, Bytes::gib(1)).expect_err("bad number");
        assert!(e.contains("t.csv:3"), "{e}");
        std::fs::write(&f, "0,100\n0,200\n").expect("write");
        assert!(
            load_trace(&f, Bytes::gib(1))
                .expect_err("order")
                .contains(":2")
        );
        // A huge field is quoted by its start and length, a tiny time in exponent form
        // (session 27's bad-input hunt: a 250 MB error, a 330-digit time).
        std::fs::write(&f, format!("0,{}\n", "9".repeat(100_000))).expect("write");
        let e = load_trace(&f, Bytes::gib(1)).expect_err("infinite");
        assert!(e.len() < 200 && e.contains("… (100000 characters)"), "{e}");
        std::fs::write(&f, "0,1\n5e-324,1\n").expect("write");
        let e = load_trace(&f, Bytes::gib(1)).expect_err("same millisecond");
        assert!(e.contains("time_s 5e-324 is not after"), "{e}");
    }
}
