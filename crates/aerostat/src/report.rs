//! What users look at: progress bars, summary tables, and the files a run leaves.

use std::io::Write as _;
use std::path::Path;

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
    let mut log = Vec::new();
    for (t, action) in &result.actions {
        let mut v = serde_json::to_value(action)?;
        v["time_s"] = serde_json::json!(t.as_secs_f64());
        serde_json::to_writer(&mut log, &v)?;
        log.write_all(b"\n")?;
    }
    write("decisions.jsonl", &log)?;
    plots::write_all(dir, scenario, &result.series)
}
