//! What users look at: progress bars, summary tables, and the files a run leaves.

use std::io::Write as _;
use std::path::Path;

use aerostat_core::Bytes;
use aerostat_sim::{RunResult, Scenario, Summary};
use anyhow::Context;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

use crate::plots;

/// `println!` that does not panic when stdout is closed (`aerostat sim | head`): the output
/// is lost, the run is not.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// A progress bar over simulated ticks (hidden when quiet or not a terminal).
pub fn progress_bar(total: u64, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>16} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// One row per run: the judging metrics.
pub fn summary_table(rows: &[Summary]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "scenario",
        "policy",
        "reclaimed GiB·h",
        "oracle GiB·h",
        "% of oracle",
        "stall s",
        "stall %",
        "guest swap-in GiB",
        "host swap-out GiB",
        "guest OOM",
        "host OOM",
        "actions",
    ]);
    for s in rows {
        t.add_row(vec![
            Cell::new(&s.scenario),
            Cell::new(&s.policy),
            num(format!("{:.1}", s.reclaimed_gib_hours)),
            num(format!("{:.1}", s.oracle_reclaimable_gib_hours)),
            num(format!("{:.1}", 100.0 * s.oracle_ratio)),
            num(format!("{:.1}", s.guest_stall_seconds)),
            num(format!("{:.3}", s.stall_percent)),
            num(format!("{:.2}", s.guest_swap_in_gib)),
            num(format!("{:.2}", s.host_swap_out_gib)),
            num(s.guest_oom_kills.to_string()),
            num(s.host_oom_kills.to_string()),
            num(s.actions.to_string()),
        ]);
    }
    t
}

/// The TLB shootdown estimate of a scenario's `[tlb]` table (`aerostat_sim::tlb`), one
/// line, or `None` without one.
pub fn tlb(summary: &Summary) -> Option<String> {
    let flushed = summary.tlb_entries_flushed?;
    let refill = summary.tlb_refill_seconds.unwrap_or(0.0);
    Some(format!(
        "TLB shootdowns (estimate, [tlb]): {flushed:.0} entries flushed, {refill:.4} s of refills \
         (CPU time, not counted as stall)"
    ))
}

/// The escape's migrations: a table (who, when, strategy, time, downtime, data) and each
/// one's trigger, reason and note. `None` when the run started none.
pub fn migrations(result: &RunResult) -> Option<String> {
    if result.migrations.is_empty() {
        return None;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "migrated VM",
        "started",
        "outcome",
        "strategy (planned → ran)",
        "predicted s",
        "took s",
        "downtime ms",
        "post-copy s",
        "sent GiB",
        "dirty MiB/s (measured / true)",
    ]);
    let mib = |b: u64| b as f64 / Bytes::MIB as f64;
    for m in &result.migrations {
        let strategy = if m.planned == m.strategy {
            m.planned.to_string()
        } else {
            format!("{} → {}", m.planned, m.strategy)
        };
        t.add_row(vec![
            Cell::new(&m.vm),
            num(clock(m.started_s)),
            Cell::new(m.outcome.as_str()),
            Cell::new(strategy),
            num(format!("{:.1}", m.predicted_time_s)),
            num(format!("{:.1}", m.total_time_s)),
            num(format!("{:.0}", m.downtime_s * 1000.0)),
            num(format!("{:.1}", m.postcopy_time_s)),
            num(format!("{:.2}", m.bytes_sent as f64 / Bytes::GIB as f64)),
            num(format!(
                "{:.0} / {:.0}",
                mib(m.measured_dirty_rate),
                mib(m.true_dirty_rate)
            )),
        ]);
    }
    let mut s = t.to_string();
    for m in &result.migrations {
        s.push_str(&format!(
            "\n{} at {}: {}.\n  why {}: {}",
            m.vm,
            clock(m.started_s),
            m.trigger,
            m.vm,
            m.reason
        ));
        if !m.note.is_empty() {
            s.push_str(&format!("\n  note: {}", m.note));
        }
    }
    Some(s)
}

/// Simulated time as `h:mm:ss`.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn num(s: String) -> Cell {
    Cell::new(s).set_alignment(CellAlignment::Right)
}

/// summary.json, timeseries.csv, decisions.jsonl and the plots.
pub fn write_run(dir: &Path, scenario: &Scenario, result: &RunResult) -> anyhow::Result<()> {
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))
    };
    let mut json = serde_json::to_string_pretty(&result.summary)?;
    json.push('\n');
    write("summary.json", json.as_bytes())?;
    write("timeseries.csv", result.series.to_csv().as_bytes())?;
    // Balloon actions, and the escape's migrations where they started (after that tick's
    // actions: the escape runs first, but a migration is one line, not a series).
    let mut lines: Vec<(f64, serde_json::Value)> = Vec::new();
    for (t, action) in &result.actions {
        let mut v = serde_json::to_value(action)?;
        v["time_s"] = serde_json::json!(t.as_secs_f64());
        lines.push((t.as_secs_f64(), v));
    }
    for m in &result.migrations {
        let mut v = serde_json::to_value(m)?;
        v["action"] = serde_json::json!("migrate");
        v["time_s"] = serde_json::json!(m.started_s);
        lines.push((m.started_s, v));
    }
    // Stable: actions of one time keep their order, a migration goes after them.
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut log = Vec::new();
    for (_, v) in &lines {
        serde_json::to_writer(&mut log, v)?;
        log.write_all(b"\n")?;
    }
    write("decisions.jsonl", &log)?;
    plots::write_all(dir, scenario, &result.series)
}
