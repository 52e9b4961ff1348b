//! SVG plots of a simulation run (plotters).
//!
//! Every plot has a legend column on the right instead of a legend inside the chart: the
//! host plot is filled edge to edge with stacked areas, and the balloon plot can have a dozen
//! entries, so an in-chart legend would hide data.
//!
//! Only plotters' SVG backend is used; it writes `<text>` elements, so no font files are read
//! (the `ttf` feature stays off and text sizes are estimated).

use std::ops::Range;
use std::path::Path;

use aerostat_sim::metrics::{HostRow, VmRow};
use aerostat_sim::{Scenario, TimeSeries};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

const GIB: f64 = (1u64 << 30) as f64;
const SIZE: (u32, u32) = (1200, 700);
const LEGEND_WIDTH: u32 = 240;
/// Drawing every VM of a large fleet is unreadable; this many are picked.
const MAX_VMS: usize = 8;
const FONT: &str = "sans-serif";

/// Distinguishable colours (Tableau 10), one per plotted VM.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const GREY: RGBColor = RGBColor(127, 127, 127);

type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Writes host-memory.svg, balloons.svg and stalls.svg into `dir`.
pub fn write_all(dir: &Path, scenario: &Scenario, series: &TimeSeries) -> anyhow::Result<()> {
    let name = format!("{} · policy {}", scenario.name, series.policy);
    host_memory(&dir.join("host-memory.svg"), &name, series)?;
    balloons(&dir.join("balloons.svg"), &name, series)?;
    stalls(&dir.join("stalls.svg"), &name, series)?;
    Ok(())
}

/// Host memory breakdown: stacked system / guests / free, host size, reserve line, swap.
fn host_memory(path: &Path, name: &str, s: &TimeSeries) -> anyhow::Result<()> {
    let (plot, legend) = canvas(path, &format!("Host memory — {name}"))?;
    let host = s.host_memory / GIB;
    let limit = (s.host_memory - s.reserve) / GIB;
    let peak = s
        .rows
        .iter()
        .map(|r| (r.used + r.free).max(r.swap_used) / GIB);
    let x = x_range(s);
    let mut chart = time_chart(&plot, x.clone(), y_range(peak.chain([host])), "GiB")?;

    // Stacked areas are drawn as cumulative totals, largest first, so each lower layer paints
    // over the one above it.
    for (layer, colour) in [PALETTE[2], PALETTE[0], GREY].into_iter().enumerate() {
        let points = s
            .rows
            .iter()
            .map(|r| (hours(r.t_s), stack(r)[2 - layer] / GIB));
        chart.draw_series(AreaSeries::new(points, 0.0, tint(colour)).border_style(colour))?;
    }
    chart.draw_series(LineSeries::new(
        [(x.start, host), (x.end, host)],
        BLACK.stroke_width(2),
    ))?;
    chart.draw_series(DashedLineSeries::new(
        [(x.start, limit), (x.end, limit)],
        8,
        5,
        BLACK.stroke_width(1),
    ))?;
    let swap = s.rows.iter().map(|r| (hours(r.t_s), r.swap_used / GIB));
    chart.draw_series(LineSeries::new(swap, PALETTE[3].stroke_width(2)))?;
    // The escape's migrations: a dashed line where each started, a solid one where it ended.
    for (start, end, _) in &s.events {
        let top = chart.y_range().end;
        chart.draw_series(DashedLineSeries::new(
            [(hours(*start), 0.0), (hours(*start), top)],
            4,
            4,
            PALETTE[4].stroke_width(2),
        ))?;
        if let Some(end) = end {
            chart.draw_series(LineSeries::new(
                [(hours(*end), 0.0), (hours(*end), top)],
                PALETTE[4].stroke_width(2),
            ))?;
        }
    }

    let mut entries = vec![
        Entry::new("free", tint(PALETTE[2]), Stroke::Fill),
        Entry::new("guest-resident", tint(PALETTE[0]), Stroke::Fill),
        Entry::new("host system + overhead", tint(GREY), Stroke::Fill),
        Entry::new(format!("host memory ({host:.0} GiB)"), BLACK, Stroke::Solid),
        Entry::new("host memory − reserve", BLACK, Stroke::Dashed),
        Entry::new("host swap used", PALETTE[3], Stroke::Solid),
    ];
    for (_, end, vm) in &s.events {
        entries.push(Entry::new(
            format!("{vm} migrates away"),
            PALETTE[4],
            Stroke::Dashed,
        ));
        if end.is_some() {
            entries.push(Entry::new(
                format!("{vm} has left"),
                PALETTE[4],
                Stroke::Solid,
            ));
        }
    }
    draw_legend(&legend, &entries)?;
    plot.present()?;
    Ok(())
}

/// Per-VM guest memory against its true working set, for at most `MAX_VMS` VMs.
fn balloons(path: &Path, name: &str, s: &TimeSeries) -> anyhow::Result<()> {
    let picked = pick_vms(s);
    let shown = if picked.len() < s.vm_names.len() {
        format!(" ({} of {} VMs)", picked.len(), s.vm_names.len())
    } else {
        String::new()
    };
    let (plot, legend) = canvas(
        path,
        &format!("Guest memory vs working set — {name}{shown}"),
    )?;
    let peak = picked.iter().flat_map(|&i| {
        let configured = s.configured.get(i).copied().unwrap_or(0.0);
        vm_rows(s, i).map(move |v| v.actual.max(v.true_ws).max(configured) / GIB)
    });
    let x = x_range(s);
    let mut chart = time_chart(&plot, x.clone(), y_range(peak), "GiB")?;

    // Fleets usually share a few sizes: one faint line per distinct configured size.
    let mut sizes: Vec<f64> = picked
        .iter()
        .filter_map(|&i| s.configured.get(i).copied())
        .collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    for c in sizes {
        let c = c / GIB;
        chart.draw_series(LineSeries::new([(x.start, c), (x.end, c)], GREY.mix(0.5)))?;
    }

    let mut entries = Vec::new();
    for (k, &i) in picked.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let actual = running_segments(s, i, |v| v.actual);
        chart.draw_series(
            actual
                .into_iter()
                .map(|seg| PathElement::new(seg, colour.stroke_width(2))),
        )?;
        let ws = running_segments(s, i, |v| v.true_ws);
        chart.draw_series(
            ws.into_iter()
                .map(|seg| DashedPathElement::new(seg, 6, 4, colour.stroke_width(1))),
        )?;
        entries.push(Entry::new(truncate(&s.vm_names[i]), colour, Stroke::Solid));
    }
    entries.push(Entry::new("", WHITE, Stroke::None));
    entries.push(Entry::new("guest memory (actual)", GREY, Stroke::Solid));
    entries.push(Entry::new("true working set", GREY, Stroke::Dashed));
    entries.push(Entry::new("configured", GREY.mix(0.5), Stroke::Solid));
    draw_legend(&legend, &entries)?;
    plot.present()?;
    Ok(())
}

/// Stall seconds per sample window (top), reclaimed vs oracle-reclaimable memory (bottom).
fn stalls(path: &Path, name: &str, s: &TimeSeries) -> anyhow::Result<()> {
    let (plot, legend) = canvas(path, &format!("Stalls and reclaim — {name}"))?;
    let (top, bottom) = plot.split_vertically(plot.dim_in_pixel().1 / 2);
    let (top_legend, bottom_legend) = legend.split_vertically(legend.dim_in_pixel().1 / 2);
    let x = x_range(s);

    let stall = || s.rows.iter().map(|r| (hours(r.t_s), r.stall_s.max(0.0)));
    let mut chart = time_chart(
        &top,
        x.clone(),
        y_range(stall().map(|p| p.1)),
        "stall s / sample",
    )?;
    chart.draw_series(AreaSeries::new(stall(), 0.0, tint(PALETTE[3])).border_style(PALETTE[3]))?;
    draw_legend(
        &top_legend,
        &[Entry::new(
            "stall s per sample, all VMs",
            tint(PALETTE[3]),
            Stroke::Fill,
        )],
    )?;

    let gib = |f: fn(&HostRow) -> f64| s.rows.iter().map(move |r| (hours(r.t_s), f(r) / GIB));
    let peak = gib(|r| r.reclaimed.max(r.oracle)).map(|p| p.1);
    let mut chart = time_chart(&bottom, x, y_range(peak), "GiB")?;
    chart.draw_series(
        AreaSeries::new(gib(|r| r.reclaimed), 0.0, tint(PALETTE[0])).border_style(PALETTE[0]),
    )?;
    chart.draw_series(DashedLineSeries::new(
        gib(|r| r.oracle),
        6,
        4,
        BLACK.stroke_width(2),
    ))?;
    draw_legend(
        &bottom_legend,
        &[
            Entry::new("reclaimed (balloons)", tint(PALETTE[0]), Stroke::Fill),
            Entry::new("oracle-reclaimable", BLACK, Stroke::Dashed),
        ],
    )?;
    plot.present()?;
    Ok(())
}

/// One simulated ratio of `aerostat plan`.
#[derive(Clone, Copy, Debug)]
pub struct PlanPoint {
    pub ratio: f64,
    pub stall_percent: f64,
    pub predicted_io_mib_s: f64,
    pub simulated_io_mib_s: f64,
}

/// `aerostat plan`: stall % (top) and swap I/O (bottom) against the overcommit ratio, with
/// the safe limits dashed and the analytic R_max as a vertical line.
pub fn plan(
    path: &Path,
    name: &str,
    points: &[PlanPoint],
    r_max: f64,
    safe_io_mib_s: f64,
    safe_stall_percent: f64,
) -> anyhow::Result<()> {
    let (plot, legend) = canvas(path, &format!("Overcommit sweep — {name}"))?;
    let (top, bottom) = plot.split_vertically(plot.dim_in_pixel().1 / 2);
    let (top_legend, bottom_legend) = legend.split_vertically(legend.dim_in_pixel().1 / 2);
    let lo = points.iter().map(|p| p.ratio).fold(r_max, f64::min);
    let hi = points.iter().map(|p| p.ratio).fold(r_max, f64::max);
    let pad = ((hi - lo) * 0.05).max(0.05);
    let x = (lo - pad).max(0.0)..hi + pad;
    let r_max_line = |chart: &mut Chart<'_, '_>| -> anyhow::Result<()> {
        let top = chart.y_range().end;
        chart.draw_series(LineSeries::new(
            [(r_max, 0.0), (r_max, top)],
            PALETTE[2].stroke_width(2),
        ))?;
        Ok(())
    };
    let hline = |chart: &mut Chart<'_, '_>, y: f64| -> anyhow::Result<()> {
        chart.draw_series(DashedLineSeries::new(
            [(x.start, y), (x.end, y)],
            8,
            5,
            BLACK.stroke_width(1),
        ))?;
        Ok(())
    };
    let mark = |chart: &mut Chart<'_, '_>, pts: Vec<(f64, f64)>, c: RGBColor| {
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        anyhow::Ok(())
    };

    // Both panels end their legend with the safe line and the analytic R_max.
    let reference = |safe: String| {
        [
            Entry::new(safe, BLACK, Stroke::Dashed),
            Entry::new(
                format!("analytic R_max = {r_max:.2}"),
                PALETTE[2],
                Stroke::Solid,
            ),
        ]
    };

    let stall: Vec<(f64, f64)> = points.iter().map(|p| (p.ratio, p.stall_percent)).collect();
    let y = y_range(stall.iter().map(|p| p.1).chain([safe_stall_percent]));
    let mut chart = xy_chart(
        &top,
        x.clone(),
        y,
        "overcommit ratio R",
        "stall % of VM-time",
    )?;
    hline(&mut chart, safe_stall_percent)?;
    r_max_line(&mut chart)?;
    mark(&mut chart, stall, PALETTE[3])?;
    let [safe, rmax] = reference(format!("safe: {safe_stall_percent} %"));
    draw_legend(
        &top_legend,
        &[
            Entry::new("simulated stall %", PALETTE[3], Stroke::Solid),
            safe,
            rmax,
        ],
    )?;

    let predicted: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.ratio, p.predicted_io_mib_s))
        .collect();
    let simulated: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.ratio, p.simulated_io_mib_s))
        .collect();
    let y = y_range(
        predicted
            .iter()
            .chain(&simulated)
            .map(|p| p.1)
            .chain([safe_io_mib_s]),
    );
    let mut chart = xy_chart(
        &bottom,
        x.clone(),
        y,
        "overcommit ratio R",
        "swap I/O MiB/s",
    )?;
    hline(&mut chart, safe_io_mib_s)?;
    r_max_line(&mut chart)?;
    mark(&mut chart, predicted, PALETTE[0])?;
    mark(&mut chart, simulated, PALETTE[1])?;
    let [safe, rmax] = reference(format!("safe: {safe_io_mib_s:.0} MiB/s"));
    draw_legend(
        &bottom_legend,
        &[
            Entry::new("predicted (model, peak)", PALETTE[0], Stroke::Solid),
            Entry::new("simulated swap I/O, mean", PALETTE[1], Stroke::Solid),
            safe,
            rmax,
        ],
    )?;
    plot.present()?;
    Ok(())
}

/// Cumulative host memory layers: system + overhead, + guest-resident, + free.
fn stack(r: &HostRow) -> [f64; 3] {
    let system = (r.used - r.guests).max(0.0);
    let guests = r.guests.clamp(0.0, r.used.max(0.0));
    [system, system + guests, system + guests + r.free.max(0.0)]
}

/// A titled SVG split into the plot area and the legend column.
fn canvas<'b>(path: &'b Path, title: &str) -> anyhow::Result<(Area<'b>, Area<'b>)> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 22))?;
    let width = body.dim_in_pixel().0;
    Ok(body.split_horizontally(width - LEGEND_WIDTH))
}

/// A chart with hours on x, a mesh and axis descriptions.
fn time_chart<'a, 'b>(
    area: &'a Area<'b>,
    x: Range<f64>,
    y: Range<f64>,
    y_desc: &str,
) -> anyhow::Result<Chart<'a, 'b>> {
    xy_chart(area, x, y, "hours", y_desc)
}

/// A chart with a mesh and axis descriptions.
fn xy_chart<'a, 'b>(
    area: &'a Area<'b>,
    x: Range<f64>,
    y: Range<f64>,
    x_desc: &str,
    y_desc: &str,
) -> anyhow::Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .light_line_style(BLACK.mix(0.05))
        .label_style((FONT, 14))
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()?;
    Ok(chart)
}

/// Sample times in hours; never empty, so plotters always gets a range it can divide by.
fn x_range(s: &TimeSeries) -> Range<f64> {
    // Runs start at time 0 even if the first sample comes later.
    let start = s.rows.first().map_or(0.0, |r| hours(r.t_s).min(0.0));
    let end = s.rows.last().map_or(0.0, |r| hours(r.t_s));
    if end > start {
        start..end
    } else {
        start..start + 1.0
    }
}

/// 0 up to a little above the largest value; 0..1 when there is nothing above zero.
fn y_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let max = values.filter(|v| v.is_finite()).fold(0.0, f64::max);
    if max > 0.0 { 0.0..max * 1.08 } else { 0.0..1.0 }
}

/// A pale, opaque version of `c`: stacked areas must not blend into each other's colours.
fn tint(c: RGBColor) -> RGBColor {
    let pale = |v: u8| (f64::from(v) * 0.4 + 255.0 * 0.6).round() as u8;
    RGBColor(pale(c.0), pale(c.1), pale(c.2))
}

/// Axis labels without trailing zeros ("6", "0.5"), which plotters' default "6.0" lacks.
fn tick(v: &f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn hours(t_s: f64) -> f64 {
    t_s / 3600.0
}

/// The samples of VM `i`; empty if the series is inconsistent rather than panicking.
fn vm_rows(s: &TimeSeries, i: usize) -> impl Iterator<Item = &VmRow> {
    let n = s.vm_names.len();
    (0..s.rows.len()).filter_map(move |k| s.vm_rows.get(k * n + i))
}

/// Points of `value` for VM `i`, split where the VM is not running (actual 0), so stopped
/// VMs leave a gap instead of a line plunging to zero.
fn running_segments(s: &TimeSeries, i: usize, value: fn(&VmRow) -> f64) -> Vec<Vec<(f64, f64)>> {
    let mut segments = vec![Vec::new()];
    for (r, v) in s.rows.iter().zip(vm_rows(s, i)) {
        if v.actual > 0.0 {
            if let Some(seg) = segments.last_mut() {
                seg.push((hours(r.t_s), value(v) / GIB));
            }
        } else if segments.last().is_some_and(|seg| !seg.is_empty()) {
            segments.push(Vec::new());
        }
    }
    segments.retain(|seg| !seg.is_empty());
    segments
}

/// The VMs worth plotting, in fleet order: all of them if few. Otherwise half the slots go
/// to the VMs whose memory moves the most (where a policy is visibly at work, or failing) and
/// the rest are spread evenly over the others, so every group of a mixed fleet shows up.
fn pick_vms(s: &TimeSeries) -> Vec<usize> {
    let n = s.vm_names.len();
    if n <= MAX_VMS {
        return (0..n).collect();
    }
    let mut by_spread: Vec<(usize, f64)> = (0..n).map(|i| (i, spread(s, i))).collect();
    // Stable sort: equal spreads (e.g. an idle fleet) keep fleet order.
    by_spread.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut picked: Vec<usize> = by_spread[..MAX_VMS / 2].iter().map(|&(i, _)| i).collect();
    let rest: Vec<usize> = (0..n).filter(|i| !picked.contains(i)).collect();
    let want = MAX_VMS - picked.len();
    // rest.len() > want, so these indices are distinct.
    picked.extend((0..want).map(|k| rest[k * rest.len() / want]));
    picked.sort_unstable();
    picked
}

/// How far VM `i`'s guest memory and true working set move while it runs.
fn spread(s: &TimeSeries, i: usize) -> f64 {
    let range = |f: fn(&VmRow) -> f64| {
        let running = vm_rows(s, i).filter(|v| v.actual > 0.0).map(f);
        let (lo, hi) = running.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if hi >= lo { hi - lo } else { 0.0 }
    };
    range(|v| v.actual) + range(|v| v.true_ws)
}

/// Keeps legend labels inside the legend column. The middle goes, not the end: replicas
/// differ only in their suffix ("db-0", "db-1").
fn truncate(name: &str) -> String {
    const HEAD: usize = 12;
    const TAIL: usize = 13;
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= HEAD + TAIL + 1 {
        return name.to_string();
    }
    let head: String = chars[..HEAD].iter().collect();
    let tail: String = chars[chars.len() - TAIL..].iter().collect();
    format!("{head}…{tail}")
}

enum Stroke {
    Solid,
    Dashed,
    Fill,
    /// A blank line separating groups of entries.
    None,
}

struct Entry {
    label: String,
    colour: RGBAColor,
    stroke: Stroke,
}

impl Entry {
    fn new(label: impl Into<String>, colour: impl Color, stroke: Stroke) -> Entry {
        Entry {
            label: label.into(),
            colour: colour.to_rgba(),
            stroke,
        }
    }
}

/// A legend drawn by hand in its own column: a swatch and a label per entry.
fn draw_legend(area: &Area<'_>, entries: &[Entry]) -> anyhow::Result<()> {
    const X0: i32 = 8;
    const X1: i32 = 40;
    for (k, e) in entries.iter().enumerate() {
        let y = 24 + 22 * k as i32;
        let line = [(X0, y), (X1, y)];
        match e.stroke {
            Stroke::Solid => area.draw(&PathElement::new(line, e.colour.stroke_width(2)))?,
            Stroke::Dashed => area.draw(&DashedPathElement::new(
                line,
                6,
                4,
                e.colour.stroke_width(2),
            ))?,
            Stroke::Fill => area.draw(&Rectangle::new(
                [(X0, y - 6), (X1, y + 6)],
                e.colour.filled(),
            ))?,
            Stroke::None => {}
        }
        area.draw(&Text::new(e.label.clone(), (X1 + 8, y - 8), (FONT, 14)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(samples: usize, vms: usize) -> TimeSeries {
        let mut s = TimeSeries {
            policy: "test".into(),
            vm_names: (0..vms).map(|i| format!("vm-{i}")).collect(),
            configured: vec![4.0 * GIB; vms],
            reserve: GIB,
            host_memory: 16.0 * GIB,
            ..TimeSeries::default()
        };
        for k in 0..samples {
            let t = k as f64;
            s.rows.push(HostRow {
                t_s: 600.0 * t,
                used: 8.0 * GIB,
                guests: 6.0 * GIB,
                free: 8.0 * GIB,
                swap_used: 0.0,
                reclaimed: GIB * t,
                oracle: 2.0 * GIB * t,
                stall_s: t % 3.0,
            });
            for i in 0..vms {
                // VM 1 is stopped for the middle samples.
                let running = i != 1 || k % 4 < 2;
                s.vm_rows.push(VmRow {
                    actual: if running {
                        (2.0 + (i * k) as f64 % 2.0) * GIB
                    } else {
                        0.0
                    },
                    target: 0.0,
                    true_ws: if running { GIB } else { 0.0 },
                    stall_s: 0.1,
                });
            }
        }
        s
    }

    fn scenario() -> Scenario {
        let demo = include_str!("../../../scenarios/web-diurnal.toml");
        Scenario::parse(demo, Path::new("web-diurnal.toml")).expect("the demo scenario parses")
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("aerostat-plots-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn writes_three_svgs() {
        let scenario = scenario();
        for (samples, vms) in [(0, 0), (1, 1), (0, 3), (12, 3), (12, 20)] {
            let dir = temp_dir(&format!("{samples}-{vms}"));
            write_all(&dir, &scenario, &synthetic(samples, vms)).expect("plots are written");
            for f in ["host-memory.svg", "balloons.svg", "stalls.svg"] {
                let svg = std::fs::read_to_string(dir.join(f)).expect("plot exists");
                assert!(svg.contains("<svg"), "{f} is an SVG");
            }
            std::fs::remove_dir_all(&dir).expect("cleanup");
        }
    }

    #[test]
    fn migrations_are_marked_on_the_host_plot() {
        let scenario = scenario();
        let mut series = synthetic(12, 3);
        let dir = temp_dir("events");
        write_all(&dir, &scenario, &series).expect("plots are written");
        let plain = std::fs::read_to_string(dir.join("host-memory.svg")).expect("plot");
        assert!(!plain.contains("migrates away"));
        series.events = vec![
            (3600.0, Some(3620.0), "vm-1".into()),
            (7200.0, None, "vm-2".into()),
        ];
        write_all(&dir, &scenario, &series).expect("plots are written");
        let marked = std::fs::read_to_string(dir.join("host-memory.svg")).expect("plot");
        assert!(marked.contains("vm-1 migrates away"), "legend entry");
        assert!(marked.contains("vm-1 has left"), "legend entry");
        assert!(!marked.contains("vm-2 has left"), "vm-2 never left");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn all_zero_values_do_not_panic() {
        let mut s = synthetic(5, 2);
        s.host_memory = 0.0;
        s.reserve = 0.0;
        s.configured = vec![0.0; 2];
        s.rows.iter_mut().for_each(|r| {
            *r = HostRow {
                t_s: r.t_s,
                ..HostRow::default()
            }
        });
        s.vm_rows.iter_mut().for_each(|v| *v = VmRow::default());
        let dir = temp_dir("zeros");
        write_all(&dir, &scenario(), &s).expect("plots are written");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn picks_varied_and_spread_vms_in_fleet_order() {
        // In `synthetic`, odd VMs vary and even ones are flat.
        let s = synthetic(12, 20);
        let picked = pick_vms(&s);
        assert_eq!(picked.len(), MAX_VMS);
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
        for i in [1, 3, 5, 7] {
            assert!(picked.contains(&i), "vm-{i} varies most: {picked:?}");
        }
        assert!(
            picked.iter().any(|&i| i >= 14),
            "the fleet's tail is shown: {picked:?}"
        );
    }

    #[test]
    fn long_names_keep_their_suffix() {
        assert_eq!(truncate("web-1"), "web-1");
        assert_eq!(
            truncate("leaky-database-with-a-rather-long-name-31"),
            "leaky-databa…-long-name-31"
        );
    }

    #[test]
    fn stopped_vms_leave_gaps() {
        let s = synthetic(8, 2);
        assert_eq!(running_segments(&s, 1, |v| v.actual).len(), 2);
        assert_eq!(running_segments(&s, 0, |v| v.actual).len(), 1);
    }
}
