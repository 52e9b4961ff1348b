//! How fast a guest's working set grows: the escape's outlook.
//!
//! A live migration is spent once: a host has few peers to send guests to, and the grace
//! period and the migration itself take minutes. A departure sized to this tick's lack
//! alone chose the guest that covered it soonest — on a host where two analytics guests
//! ramped 28 GiB an hour each, a 9 GiB app server for a 560 MiB lack, then another for
//! 285 MiB, and with both peers spent the ramp went on (reviewer-4's
//! `escape-nonconvergent-dbs`: 159,298 stall-s). [`Trend`] keeps a guest's working set, as
//! the policy estimates it, once a minute for ten minutes and every six minutes for an hour,
//! and fits a line through each: the escape prefers a departure after which the rest still
//! fit [`OUTLOOK`] ahead at the smaller slope (and a growing guest's departure sheds its
//! growth too). Carried ahead, short growth misleads: `docs/examples/escape-review/`.

use crate::units::{Bytes, Millis};

/// How far ahead the escape looks: the growth seen, carried on this long.
pub const OUTLOOK: Millis = Millis(30 * 60_000);

/// A line is fitted through eleven samples (ten intervals) ...
const SAMPLES: usize = 11;
/// ... and says nothing through fewer than six (half its span): a guest's working set moves
/// with noise that a two-point slope takes for growth.
const MIN_SAMPLES: usize = 6;
/// The recent line: a sample a minute, ten minutes.
const RECENT_EVERY: Millis = Millis(60_000);
/// The hour's line: a sample every six minutes, an hour.
const HOUR_EVERY: Millis = Millis(6 * 60_000);

/// Standard errors a slope must stand above zero to count as growth.
const SIGNIFICANCE: f64 = 3.0;

/// One guest's working set over the last ten minutes and the last hour. The growth carried
/// ahead is the smaller of the two lines' slopes: what the guest has kept up, not only what
/// it did lately — a burst ten minutes old reads as its whole rate on the recent line and as
/// a fraction of it on the hour's (`docs/examples/escape-review/02-leak-vs-burst.toml`: a
/// 20-minute burst carried ahead at its peak rate took the only peer from a guest leaking
/// 8 GiB/h, which then filled the host: 50 OOM kills).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trend {
    recent: Line,
    hour: Line,
}

impl Trend {
    /// Whether a sample is due at `now` (a minute since the last one).
    pub fn due(&self, now: Millis) -> bool {
        self.recent.due(now, RECENT_EVERY)
    }

    /// Takes the working set at `now`.
    pub fn push(&mut self, now: Millis, working_set: Bytes) {
        self.recent.push(now, working_set);
        if self.hour.due(now, HOUR_EVERY) {
            self.hour.push(now, working_set);
        }
    }

    /// Growth per second: the smaller of the recent and the hour's line, at least 0.
    pub fn growth(&self, now: Millis) -> Bytes {
        self.recent
            .growth(now, RECENT_EVERY)
            .min(self.hour.growth(now, HOUR_EVERY))
    }
}

/// A ring of (time, working set) samples taken at a fixed spacing, and the line through them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Line {
    /// From `next` once full.
    samples: [(Millis, Bytes); SAMPLES],
    len: usize,
    next: usize,
    last: Option<Millis>,
}

impl Line {
    fn due(&self, now: Millis, every: Millis) -> bool {
        self.last
            .is_none_or(|t| now.saturating_sub(t) >= every || now < t)
    }

    /// A clock that went backwards starts over.
    fn push(&mut self, now: Millis, working_set: Bytes) {
        if self.last.is_some_and(|t| now < t) {
            *self = Line::default();
        }
        self.samples[self.next] = (now, working_set);
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
        self.last = Some(now);
    }

    /// Growth per second by least squares, at least 0; 0 with fewer than MIN_SAMPLES. A
    /// sample older than the window says nothing of now: a guest not sampled for a whole
    /// window (no working set: blind, migrating) starts over.
    fn growth(&self, now: Millis, every: Millis) -> Bytes {
        if self.len < MIN_SAMPLES
            || self
                .last
                .is_none_or(|t| now.saturating_sub(t) > Millis(every.0 * SAMPLES as u64))
        {
            return Bytes::ZERO;
        }
        let points = self.samples[..self.len]
            .iter()
            .map(|&(t, w)| (t.as_secs_f64(), w.as_f64()));
        let n = self.len as f64;
        let mean_t = points.clone().map(|p| p.0).sum::<f64>() / n;
        let mean_w = points.clone().map(|p| p.1).sum::<f64>() / n;
        let (mut cov, mut var) = (0.0, 0.0);
        for (t, w) in points.clone() {
            cov += (t - mean_t) * (w - mean_w);
            var += (t - mean_t) * (t - mean_t);
        }
        if var <= 0.0 {
            return Bytes::ZERO;
        }
        let slope = cov / var;
        // Growth the line does not explain better than noise is none: a steady 40 GiB
        // database with 3 % noise read 3 MiB/s of growth (5 GiB over the outlook) from
        // ten points. The slope counts when it stands SIGNIFICANCE standard errors clear
        // of zero.
        let residual: f64 = points
            .map(|(t, w)| {
                let r = w - mean_w - slope * (t - mean_t);
                r * r
            })
            .sum();
        let standard_error = (residual / (n - 2.0) / var).sqrt();
        if slope < SIGNIFICANCE * standard_error {
            return Bytes::ZERO;
        }
        Bytes::from_f64(slope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(every_s: u64, count: u64, ws: impl Fn(u64) -> u64) -> (Trend, Millis) {
        let mut t = Trend::default();
        let mut now = Millis::ZERO;
        for k in 0..count {
            now = Millis(k * every_s * 1000);
            if t.due(now) {
                t.push(now, Bytes::mib(ws(k * every_s)));
            }
        }
        (t, now)
    }

    #[test]
    fn a_steady_ramp_grows_at_its_rate() {
        // 8 MiB/s, sampled by one-second ticks for 40 minutes.
        let (t, now) = sampled(1, 2400, |s| 10_240 + 8 * s);
        let g = t.growth(now).as_f64() / (1 << 20) as f64;
        assert!((g - 8.0).abs() < 0.01, "{g}");
    }

    #[test]
    fn a_burst_counts_at_the_rate_the_hour_has_kept_up() {
        // Level for 50 minutes, then 40 MiB/s for 10: the recent line reads 40 MiB/s, the
        // hour's a fraction of it.
        let (t, now) = sampled(1, 3600, |s| 8_192 + 40 * s.saturating_sub(3000));
        let g = t.growth(now).as_f64() / (1 << 20) as f64;
        assert!(g < 15.0, "{g}");
        assert!(t.recent.growth(now, RECENT_EVERY).as_f64() / (1 << 20) as f64 > 30.0);
    }

    #[test]
    fn no_growth_before_half_an_hour_nor_for_a_falling_or_steady_set() {
        let (t, now) = sampled(60, 25, |s| 1000 + s);
        assert_eq!(t.growth(now), Bytes::ZERO);
        let (t, now) = sampled(60, 70, |s| 50_000 - s);
        assert_eq!(t.growth(now), Bytes::ZERO);
        let (t, now) = sampled(60, 70, |_| 4096);
        assert_eq!(t.growth(now), Bytes::ZERO);
    }

    #[test]
    fn noise_around_a_level_is_not_growth_of_its_size() {
        // ±5 % of 10 GiB each minute, alternating: a two-point slope reads ±17 MiB/s.
        let (t, now) = sampled(60, 70, |s| if (s / 60) % 2 == 0 { 10_752 } else { 9_728 });
        let g = t.growth(now).as_f64() / (1 << 20) as f64;
        assert!(g < 2.0, "{g}");
    }

    #[test]
    fn random_noise_on_a_level_is_not_growth() {
        // ±3 % of 40 GiB, scattered by a hash of the minute.
        for seed in 0..50u64 {
            let (t, now) = sampled(60, 70, |s| {
                let h = (s / 60 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
                let u = (h.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 40) as f64 / (1u64 << 24) as f64;
                (40_960.0 * (1.0 + 0.03 * (2.0 * u - 1.0))) as u64
            });
            assert_eq!(t.growth(now), Bytes::ZERO, "seed {seed}");
        }
    }

    #[test]
    fn a_stale_trend_says_nothing() {
        let (t, now) = sampled(60, 70, |s| 1000 + 10 * s);
        assert!(t.growth(now) > Bytes::ZERO);
        assert_eq!(t.growth(now + Millis(3_600_000)), Bytes::ZERO);
    }
}
