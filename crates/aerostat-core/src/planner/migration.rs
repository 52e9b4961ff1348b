//! Live-migration planner: predicts how each way of migrating a guest would go, picks the
//! cheapest one that lands within the budget, and re-plans from QEMU's per-pass numbers.
//!
//! The model (documented with its limits in `docs/migration.md`) is the standard geometric
//! pre-copy model:
//!
//! - pass 0 sends the guest's non-zero memory `S₀ = M·(1 − z)` at bandwidth `B`;
//! - pass `i` sends what was dirtied during pass `i − 1`: `Pᵢ = min(D·tᵢ₋₁, W)` where `D` is
//!   the dirty rate and `W` the most memory that can be dirty at once (the working set, by
//!   default all of `M`); so `Pᵢ₊₁ = min(r·Pᵢ, W)` with `r = D / B`;
//! - before each pass, if `P/B ≤` the downtime limit, the guest is paused and `P` is sent
//!   (stop-and-copy): that is the downtime;
//! - so pre-copy converges iff `r < 1` (or the pending set already fits), and diverges when the
//!   dirty rate reaches the bandwidth.
//!
//! Auto-converge is QEMU's: after a pass in which more than 50 % of what was sent was dirtied
//! again, twice, the vCPUs are throttled to 20 %, then +10 % per further trigger, up to 99 %;
//! the dirty rate becomes `D·(1 − throttle)`. Post-copy sends the remaining pages once, while
//! the guest already runs on the destination; its downtime is the switch-over alone.
//!
//! Pure: no clock, no I/O. Times are computed in `f64` seconds and reported as [`Millis`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::units::{Bytes, Millis};

/// QEMU's auto-converge defaults (`cpu-throttle-initial`, `cpu-throttle-increment`,
/// `max-cpu-throttle`, `throttle-trigger-threshold`).
pub const THROTTLE_INITIAL: u8 = 20;
pub const THROTTLE_INCREMENT: u8 = 10;
pub const THROTTLE_MAX: u8 = 99;
pub const THROTTLE_TRIGGER: f64 = 0.5;

/// Pause at the post-copy switch-over (device state and the discard bitmap) when nothing else
/// is known. Measured 1-3 ms on loopback with a 512 MiB guest (docs/migration.md).
pub const DEFAULT_POSTCOPY_SWITCH: Millis = Millis(20);

/// Fixed part of pre-copy's stop-and-copy pause when nothing else is known: the final dirty
/// bitmap sync, device state, and stopping and starting vCPUs, on top of sending the last dirty
/// pages. Measured 55-180 ms for an idle 512 MiB guest under TCG on loopback, 2 shared cores
/// (docs/migration.md); KVM hosts pause for less.
pub const DEFAULT_STOP_AND_COPY: Millis = Millis(100);

/// What is wrong with a migration's downtime limit and time budget, if anything, as the
/// setting's name and why — one rule for scenario files, the daemon's config and `aerostat
/// migrate`: both positive, and the budget at least the downtime (a migration cannot stop
/// the guest longer than it may take in all).
/// QEMU refuses a `downtime-limit` above 2000 s (`MAX_MIGRATE_DOWNTIME_SECONDS`).
pub const MAX_DOWNTIME: Millis = Millis(2_000_000);

pub fn timing_problem(downtime: Millis, max_time: Millis) -> Option<(&'static str, String)> {
    if downtime == Millis::ZERO {
        return Some(("downtime", "must be positive".into()));
    }
    if max_time == Millis::ZERO {
        return Some(("max_time", "must be positive".into()));
    }
    if downtime > MAX_DOWNTIME {
        return Some((
            "downtime",
            format!("{downtime} is above QEMU's largest `downtime-limit` ({MAX_DOWNTIME})"),
        ));
    }
    if max_time < downtime {
        return Some((
            "max_time",
            format!("{max_time} is below the downtime limit {downtime}"),
        ));
    }
    None
}

/// What the planner is told about one migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationInputs {
    /// Guest RAM (all of it, including hot-plugged memory).
    pub memory: Bytes,
    /// Measured dirty rate, bytes per second (distinct pages dirtied per second).
    pub dirty_rate: Bytes,
    /// Link bandwidth (or the configured cap), bytes per second, for both phases.
    pub bandwidth: Bytes,
    /// Longest acceptable pause (QEMU's `downtime-limit`, default 300 ms).
    pub downtime_limit: Millis,
    /// Budget for the whole migration.
    pub max_time: Millis,
    /// Fraction of memory that is zero pages (sent as a flag, ~free). `None`: 0.
    pub zero_fraction: Option<f64>,
    /// Most memory that can be dirty at once (the writable working set). `None`: `memory`.
    pub working_set: Option<Bytes>,
    /// Pause at the post-copy switch-over.
    pub postcopy_switch: Millis,
    /// Fixed part of pre-copy's stop-and-copy pause (see [`DEFAULT_STOP_AND_COPY`]): the
    /// downtime is this plus the last dirty pages over the link.
    #[serde(default)]
    pub stop_and_copy: Millis,
    /// Budget for the bytes on the wire (a metered or shared link): a strategy that would
    /// send more does not land. Pre-copy resends what the guest dirties, pass after pass;
    /// post-copy sends each page once more at most, so a traffic budget is what moves a
    /// rewriting guest to post-copy even when time would allow pre-copy. `None`: no limit.
    #[serde(default)]
    pub max_bytes: Option<Bytes>,
}

impl MigrationInputs {
    pub fn new(
        memory: Bytes,
        dirty_rate: Bytes,
        bandwidth: Bytes,
        downtime_limit: Millis,
        max_time: Millis,
    ) -> MigrationInputs {
        MigrationInputs {
            memory,
            dirty_rate,
            bandwidth,
            downtime_limit,
            max_time,
            zero_fraction: None,
            working_set: None,
            postcopy_switch: DEFAULT_POSTCOPY_SWITCH,
            stop_and_copy: DEFAULT_STOP_AND_COPY,
            max_bytes: None,
        }
    }

    /// Whether `bytes` on the wire stay within the traffic budget.
    fn within_traffic(&self, bytes: f64) -> bool {
        self.max_bytes.is_none_or(|m| bytes <= m.as_f64())
    }

    /// Bytes the first pass must really send.
    fn first_pass_bytes(&self) -> f64 {
        let z = self
            .zero_fraction
            .filter(|z| z.is_finite())
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);
        self.memory.as_f64() * (1.0 - z)
    }

    fn working_set_bytes(&self) -> f64 {
        self.working_set
            .unwrap_or(self.memory)
            .min(self.memory)
            .as_f64()
    }
}

/// A way to migrate, cheapest (least intrusive) first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Plain pre-copy: the guest runs untouched until the stop-and-copy.
    PreCopy,
    /// Pre-copy with QEMU's auto-converge: the guest's vCPUs get throttled.
    AutoConverge,
    /// Pre-copy's first pass, then post-copy: the guest runs on the destination while the
    /// pages dirtied during that pass are pulled; a failure then loses the guest.
    PostCopyAfterFirstPass,
    /// Post-copy at once: every page is pulled after the switch (the longest risky phase and
    /// the most page faults).
    PostCopyAtOnce,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::PreCopy,
        Strategy::AutoConverge,
        Strategy::PostCopyAfterFirstPass,
        Strategy::PostCopyAtOnce,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::PreCopy => "pre-copy",
            Strategy::AutoConverge => "auto-converge",
            Strategy::PostCopyAfterFirstPass => "post-copy-after-first-pass",
            Strategy::PostCopyAtOnce => "post-copy-at-once",
        }
    }

    pub fn is_postcopy(self) -> bool {
        matches!(
            self,
            Strategy::PostCopyAfterFirstPass | Strategy::PostCopyAtOnce
        )
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one strategy is predicted to go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub strategy: Strategy,
    /// Completes at all (ignoring the budget).
    pub converges: bool,
    /// Completes within `max_time` with a downtime within the limit.
    pub lands: bool,
    /// Start to completion; `None` when it does not converge.
    pub total_time: Option<Millis>,
    /// The guest's pause; `None` when it does not converge.
    pub downtime: Option<Millis>,
    /// Bytes on the wire; `None` when it does not converge.
    pub bytes_sent: Option<Bytes>,
    /// Pre-copy passes before the stop-and-copy or the post-copy switch (for a pre-copy
    /// that does not converge: the passes it runs within the budget).
    pub passes: u64,
    /// Time the guest runs on the destination while pages are still on the source: the
    /// window in which losing the source or the link loses the guest.
    pub postcopy_time: Millis,
    /// Highest auto-converge throttle reached, percent.
    pub max_throttle: u8,
}

impl Prediction {
    /// A strategy that does not complete: `passes` run within the budget, `max_throttle`
    /// reached.
    fn never(strategy: Strategy, passes: u64, max_throttle: u8) -> Prediction {
        Prediction {
            strategy,
            converges: false,
            lands: false,
            total_time: None,
            downtime: None,
            bytes_sent: None,
            passes,
            postcopy_time: Millis::ZERO,
            max_throttle,
        }
    }
}

fn secs_to_millis(s: f64) -> Millis {
    if s.is_finite() && s > 0.0 {
        Millis((s * 1000.0).round().min(u64::MAX as f64 / 2.0) as u64)
    } else {
        Millis::ZERO
    }
}

/// Passes simulated one by one before the closed form takes over.
const EXPLICIT_PASSES: u64 = 64;

/// Pre-copy, with or without auto-converge, from `pending` bytes still to send.
fn simulate_precopy(inp: &MigrationInputs, pending: f64, auto_converge: bool) -> Prediction {
    let strategy = if auto_converge {
        Strategy::AutoConverge
    } else {
        Strategy::PreCopy
    };
    let b = inp.bandwidth.as_f64();
    let d = inp.dirty_rate.as_f64();
    let w = inp.working_set_bytes();
    let fixed = inp.stop_and_copy.as_secs_f64();
    // QEMU's rule: stop when what is dirty can be sent within the limit. The real pause is
    // that plus the fixed part, which QEMU does not count: it may exceed the limit, and then
    // the prediction converges but does not land.
    let thr = b * inp.downtime_limit.as_secs_f64();
    let budget = inp.max_time.as_secs_f64();
    let mut p = pending;
    let (mut t, mut sent, mut passes) = (0.0_f64, 0.0_f64, 0_u64);
    let (mut throttle, mut high) = (0_u8, 0_u8);
    let mut passes_in_budget = 0_u64;
    let diverged = |passes_in_budget: u64, throttle: u8| {
        Prediction::never(strategy, passes_in_budget, throttle)
    };
    if b <= 0.0 {
        return diverged(0, 0);
    }
    loop {
        if p <= thr {
            let downtime = p / b + fixed;
            let total = t + downtime;
            let dt = secs_to_millis(downtime);
            let tt = secs_to_millis(total);
            return Prediction {
                strategy,
                converges: true,
                lands: tt <= inp.max_time
                    && dt <= inp.downtime_limit
                    && inp.within_traffic(sent + p),
                total_time: Some(tt),
                downtime: Some(dt),
                bytes_sent: Some(Bytes::from_f64(sent + p)),
                passes,
                postcopy_time: Millis::ZERO,
                max_throttle: throttle,
            };
        }
        let r = d * (1.0 - f64::from(throttle) / 100.0) / b;
        let stable = !auto_converge || throttle >= THROTTLE_MAX || r <= THROTTLE_TRIGGER;
        if stable && r >= 1.0 && p <= w {
            // The next pending set is min(r·p, W) ≥ p: it never shrinks again, diverges.
            // Count the passes that fit in the budget.
            let per_pass = p / b;
            let more = ((budget - t).max(0.0) / per_pass).floor();
            return diverged(passes_in_budget + more.min(1e9) as u64, throttle);
        }
        if stable && passes >= EXPLICIT_PASSES && r < 1.0 && r * p < w {
            if thr <= 0.0 {
                return diverged(passes_in_budget, throttle);
            }
            // Geometric tail: k more passes until p·r^k ≤ thr.
            let k = if r <= 0.0 {
                1.0
            } else {
                ((thr / p).ln() / r.ln()).ceil().max(1.0)
            };
            let sum = if r <= 0.0 {
                p
            } else {
                p * (1.0 - r.powf(k)) / (1.0 - r)
            };
            let last = if r <= 0.0 { 0.0 } else { p * r.powf(k) };
            t += sum / b;
            sent += sum;
            passes += k.min(1e12) as u64;
            p = last;
            continue;
        }
        // One explicit pass.
        let dt = p / b;
        t += dt;
        sent += p;
        passes += 1;
        if t <= budget {
            passes_in_budget = passes;
        }
        let dirtied = (d * (1.0 - f64::from(throttle) / 100.0) * dt).min(w);
        if auto_converge && dirtied > THROTTLE_TRIGGER * p {
            high += 1;
            if high >= 2 {
                high = 0;
                throttle = if throttle == 0 {
                    THROTTLE_INITIAL
                } else {
                    throttle
                        .saturating_add(THROTTLE_INCREMENT)
                        .min(THROTTLE_MAX)
                };
            }
        }
        p = dirtied;
    }
}

/// Post-copy after `precopy_bytes` were sent by pre-copy: the pages dirtied meanwhile
/// (`pending`) are sent after the switch.
fn postcopy_prediction(
    inp: &MigrationInputs,
    strategy: Strategy,
    precopy_bytes: f64,
    passes: u64,
    pending: f64,
) -> Prediction {
    let b = inp.bandwidth.as_f64();
    if b <= 0.0 {
        return Prediction::never(strategy, 0, 0);
    }
    let pre = precopy_bytes / b;
    let post = pending / b;
    let switch = inp.postcopy_switch.as_secs_f64();
    let total = secs_to_millis(pre + switch + post);
    let downtime = inp.postcopy_switch;
    Prediction {
        strategy,
        converges: true,
        lands: total <= inp.max_time
            && downtime <= inp.downtime_limit
            && inp.within_traffic(precopy_bytes + pending),
        total_time: Some(total),
        downtime: Some(downtime),
        bytes_sent: Some(Bytes::from_f64(precopy_bytes + pending)),
        passes,
        postcopy_time: secs_to_millis(post),
        max_throttle: 0,
    }
}

/// Predicts one strategy for a migration that has not started.
pub fn predict(inp: &MigrationInputs, strategy: Strategy) -> Prediction {
    let s0 = inp.first_pass_bytes();
    match strategy {
        Strategy::PreCopy => simulate_precopy(inp, s0, false),
        Strategy::AutoConverge => simulate_precopy(inp, s0, true),
        Strategy::PostCopyAtOnce => postcopy_prediction(inp, strategy, 0.0, 0, s0),
        Strategy::PostCopyAfterFirstPass => {
            let b = inp.bandwidth.as_f64();
            let dirtied = if b > 0.0 {
                (inp.dirty_rate.as_f64() * s0 / b).min(inp.working_set_bytes())
            } else {
                0.0
            };
            postcopy_prediction(inp, strategy, s0, 1, dirtied)
        }
    }
}

/// Predicts every strategy.
pub fn predict_all(inp: &MigrationInputs) -> Vec<Prediction> {
    Strategy::ALL.iter().map(|s| predict(inp, *s)).collect()
}

/// What the orchestrator may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowed {
    /// Post-copy is possible (destination reachable, capability set on both sides, no unsafe
    /// device combination).
    pub postcopy: bool,
    pub auto_converge: bool,
}

impl Allowed {
    pub const ALL: Allowed = Allowed {
        postcopy: true,
        auto_converge: true,
    };

    fn permits(self, s: Strategy) -> bool {
        match s {
            Strategy::PreCopy => true,
            Strategy::AutoConverge => self.auto_converge,
            Strategy::PostCopyAfterFirstPass | Strategy::PostCopyAtOnce => self.postcopy,
        }
    }
}

/// The planner's choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// `None`: nothing allowed completes at all.
    pub chosen: Option<Strategy>,
    /// The chosen strategy is predicted to land within the budget.
    pub within_budget: bool,
    pub reason: String,
    pub predictions: Vec<Prediction>,
}

impl Plan {
    pub fn prediction(&self, s: Strategy) -> Option<&Prediction> {
        self.predictions.iter().find(|p| p.strategy == s)
    }

    pub fn chosen_prediction(&self) -> Option<&Prediction> {
        self.chosen.and_then(|s| self.prediction(s))
    }
}

fn describe(p: &Prediction) -> String {
    match (p.total_time, p.downtime) {
        (Some(t), Some(d)) => format!("{} in {} with {} downtime", p.strategy, t, d),
        _ => format!("{} never converges", p.strategy),
    }
}

/// Picks the cheapest allowed strategy (in [`Strategy`] order) that lands within the budget;
/// if none does, the allowed one that completes soonest (post-copy always completes).
pub fn choose(inp: &MigrationInputs, allowed: Allowed) -> Plan {
    let predictions = predict_all(inp);
    let rate = |b: Bytes| format!("{}/s", b);
    let situation = format!(
        "{} of memory, dirty {} over a {} link, downtime limit {}, budget {}{}",
        inp.memory,
        rate(inp.dirty_rate),
        rate(inp.bandwidth),
        inp.downtime_limit,
        inp.max_time,
        inp.max_bytes
            .map(|m| format!(" and {m} on the wire"))
            .unwrap_or_default()
    );
    let mut skipped: Vec<String> = Vec::new();
    for p in &predictions {
        if !allowed.permits(p.strategy) {
            continue;
        }
        if p.lands {
            let why_not = if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", skipped.join("; "))
            };
            return Plan {
                chosen: Some(p.strategy),
                within_budget: true,
                reason: format!(
                    "{situation}: {} is the cheapest that lands{why_not}",
                    describe(p)
                ),
                predictions,
            };
        }
        skipped.push(match (p.total_time, p.bytes_sent) {
            (Some(t), _) if t > inp.max_time => format!("{} over budget", describe(p)),
            (Some(_), Some(b)) if !inp.within_traffic(b.as_f64()) => {
                format!("{} sends {b}, over the traffic budget", describe(p))
            }
            (Some(_), _) => format!("{} exceeds the downtime limit", describe(p)),
            (None, _) => describe(p),
        });
    }
    let fallback = predictions
        .iter()
        .filter(|p| allowed.permits(p.strategy) && p.converges)
        .min_by_key(|p| (p.total_time, p.strategy));
    let reason = match fallback {
        Some(p) => format!(
            "{situation}: nothing lands within budget ({}); {} completes soonest",
            skipped.join("; "),
            describe(p)
        ),
        None => format!(
            "{situation}: nothing allowed completes ({}){}",
            skipped.join("; "),
            if allowed.postcopy {
                ""
            } else {
                "; post-copy is not allowed"
            }
        ),
    };
    Plan {
        chosen: fallback.map(|p| p.strategy),
        within_budget: false,
        reason,
        predictions,
    }
}

/// QEMU's per-pass numbers (`query-migrate`), as the orchestrator saw them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveStats {
    /// Since `migrate` was issued.
    pub elapsed: Millis,
    pub transferred: Bytes,
    pub remaining: Bytes,
    /// `dirty-pages-rate` × page size, bytes per second (0 until the first sync period).
    pub dirty_rate: Bytes,
    /// Measured throughput (`mbps`), bytes per second; `None` when QEMU reports 0.
    pub bandwidth: Option<Bytes>,
    /// `dirty-sync-count`: 1 during the first pass, 2 once it is done, +1 per pass after.
    pub dirty_sync_count: u64,
}

impl LiveStats {
    /// The first (bulk) pass has completed.
    pub fn first_pass_done(&self) -> bool {
        self.dirty_sync_count >= 2
    }
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Continue,
    SwitchToPostcopy,
    Cancel,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replan {
    pub step: Step,
    pub reason: String,
    /// Continuing pre-copy from here (times from now, budget = what is left).
    pub precopy: Prediction,
    /// Switching to post-copy now (times from now).
    pub postcopy_now: Prediction,
}

/// Re-plans a running pre-copy from live numbers. `planned`: the inputs the migration was
/// planned with (budget, limits, the dirty rate measured before it started); `chosen`: the
/// plan's strategy.
pub fn replan(
    planned: &MigrationInputs,
    chosen: Option<Strategy>,
    allowed: Allowed,
    live: &LiveStats,
) -> Replan {
    let bandwidth = live
        .bandwidth
        .filter(|b| b.0 > 0)
        .unwrap_or(planned.bandwidth);
    // Before the first sync QEMU's rate is 0 (not measured yet): keep the planned one. After
    // it, QEMU's rate counts distinct pages per pass, so a guest that rewrites its whole
    // working set within one pass reads as `W / pass time`, however fast it writes: when the
    // pending set is (nearly) the whole working set, the planned probe is the better lower
    // bound.
    let saturated = planned
        .working_set
        .is_some_and(|w| live.remaining.as_f64() >= 0.9 * w.as_f64());
    let dirty_rate = if live.first_pass_done() && !saturated {
        live.dirty_rate
    } else {
        live.dirty_rate.max(planned.dirty_rate)
    };
    let left = planned.max_time.saturating_sub(live.elapsed);
    let bytes_left = planned
        .max_bytes
        .map(|m| m.saturating_sub(live.transferred));
    let now = MigrationInputs {
        memory: live.remaining.max(Bytes(1)),
        dirty_rate,
        bandwidth,
        downtime_limit: planned.downtime_limit,
        max_time: left,
        zero_fraction: None,
        working_set: planned.working_set,
        postcopy_switch: planned.postcopy_switch,
        stop_and_copy: planned.stop_and_copy,
        max_bytes: bytes_left,
    };
    let auto = chosen == Some(Strategy::AutoConverge);
    let precopy = simulate_precopy(&now, live.remaining.as_f64(), auto);
    let postcopy_now = postcopy_prediction(
        &now,
        Strategy::PostCopyAtOnce,
        0.0,
        0,
        live.remaining.as_f64(),
    );
    let pass = live.dirty_sync_count.saturating_sub(1);
    let (step, reason) = if allowed.postcopy && chosen == Some(Strategy::PostCopyAtOnce) {
        (
            Step::SwitchToPostcopy,
            "the plan is post-copy at once".to_string(),
        )
    } else if allowed.postcopy
        && chosen == Some(Strategy::PostCopyAfterFirstPass)
        && live.first_pass_done()
    {
        (
            Step::SwitchToPostcopy,
            format!(
                "first pass done after {}: the plan is post-copy after it; {} left to pull",
                live.elapsed, live.remaining
            ),
        )
    } else if precopy.lands {
        (
            Step::Continue,
            format!(
                "pass {pass}: pre-copy lands: {} more, {} downtime",
                precopy.total_time.unwrap_or_default(),
                precopy.downtime.unwrap_or_default()
            ),
        )
    } else {
        let verdict = match (precopy.total_time, precopy.bytes_sent, bytes_left) {
            (Some(t), _, _) if t > left => format!("pre-copy needs {t} more but {left} is left"),
            (Some(_), Some(b), Some(budget)) if !now.within_traffic(b.as_f64()) => {
                format!("pre-copy would send {b} more but {budget} of the traffic budget is left")
            }
            (Some(t), ..) => format!(
                "pre-copy needs {t} more with {} downtime, over the limit",
                precopy.downtime.unwrap_or_default()
            ),
            (None, ..) => format!(
                "pre-copy does not converge (dirty {}/s ≥ what a pass can shrink at {}/s)",
                dirty_rate, bandwidth
            ),
        };
        let post = postcopy_now.total_time.unwrap_or_default();
        if allowed.postcopy {
            // Wait for the bulk pass unless waiting would make post-copy miss the budget.
            let deadline = left <= post + Millis(500);
            if live.first_pass_done() || deadline {
                (
                    Step::SwitchToPostcopy,
                    format!(
                        "pass {pass} at {}: {verdict}; post-copy of the remaining {} finishes in {post}",
                        live.elapsed, live.remaining
                    ),
                )
            } else {
                (
                    Step::Continue,
                    format!("first pass still running; {verdict}"),
                )
            }
        } else if left == Millis::ZERO {
            (
                Step::Cancel,
                format!(
                    "budget {} spent: {verdict}, and post-copy is not possible",
                    planned.max_time
                ),
            )
        } else if bytes_left == Some(Bytes::ZERO) {
            (
                Step::Cancel,
                format!(
                    "traffic budget {} spent: {verdict}, and post-copy is not possible",
                    planned.max_bytes.unwrap_or_default()
                ),
            )
        } else {
            (
                Step::Continue,
                format!(
                    "pass {pass}: {verdict}; post-copy is not possible, cancelling at the budget"
                ),
            )
        }
    };
    Replan {
        step,
        reason,
        precopy,
        postcopy_now,
    }
}

#[cfg(test)]
mod tests;
