//! `aerostat plan`: the analytic R_max of a scenario's host and fleet, then a simulated
//! sweep over overcommit ratios that checks it.
//!
//! The model lives in `aerostat_core::planner::capacity`; this file only turns a scenario
//! into its inputs, scales the scenario to each ratio, runs the simulator and prints.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use aerostat_core::planner::capacity::{
    CapacityInputs, DEFAULT_SWAP_IO_PER_DEFICIT, Estimate, Fleet, VmGroup,
};
use aerostat_core::{Bytes, Millis};
use aerostat_sim::scenario::{Rate, VmSpec};
use aerostat_sim::{RunOptions, Scenario, Simulation, Summary};
use anyhow::Context;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use rayon::prelude::*;
use serde::Serialize;

use crate::cli::PlanArgs;
use crate::cmd::InputError;
use crate::cmd::sim::load_scenario;
use crate::{plots, report};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;
/// A run is "safe" when guests stall at most this much of their time...
pub const SAFE_STALL_PERCENT: f64 = 0.5;
/// ...and nothing is OOM-killed. Ratios above this are refused (a typo, not a plan).
const MAX_RATIO: f64 = 20.0;

/// The VMs of one `[[vm]]` table: replicas `name-0`, `name-1`, ... (or one VM `name`).
#[derive(Debug)]
struct Group {
    base: String,
    /// The scenario's replicas, in replica order.
    members: Vec<VmSpec>,
}

/// `web-11` → `web`; a name without a numeric suffix is its own group.
fn base_name(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

fn replica_index(name: &str) -> u64 {
    name.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

fn groups(scenario: &Scenario) -> Vec<Group> {
    let mut by_base: BTreeMap<String, Vec<VmSpec>> = BTreeMap::new();
    for vm in &scenario.vms {
        by_base
            .entry(base_name(&vm.name).to_string())
            .or_default()
            .push(vm.clone());
    }
    by_base
        .into_iter()
        .map(|(base, mut members)| {
            members.sort_by_key(|v| replica_index(&v.name));
            Group { base, members }
        })
        .collect()
}

/// What sets a VM's need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum NeedBasis {
    /// Its workload at its worst: the hot memory the policy leaves it.
    Peak,
    /// Its floor (`min`, or a virtio-mem guest's boot memory without a balloon): the
    /// policy takes it no lower, whatever the workload.
    Floor,
    /// Nothing can take memory back (no balloon, no virtio-mem): Linux fills free memory
    /// with page cache, so in time the guest holds all it was configured with.
    NotResizable,
}

impl NeedBasis {
    fn describe(self) -> &'static str {
        match self {
            NeedBasis::Peak => "its peak (working set + hot cache + kernel) + overhead",
            NeedBasis::Floor => "its floor (`min`, or boot memory without a balloon) + overhead",
            NeedBasis::NotResizable => {
                "all its memory + overhead: nothing takes any back (no balloon or virtio-mem device, or no controller drives it)"
            }
        }
    }
}

/// Memory one VM needs resident to run without stalls, at its workload's worst: the peak
/// anonymous working set, the hot part of the largest page cache, kernel, pinned memory and
/// QEMU's overhead — and never less than what no policy can take from it: its floor, or, for
/// a guest nothing resizes, its configured size (the model's pooled memory is only the
/// memory a policy can move). The guest's part but pinned memory counts `× (1 − ksm)`: what
/// the host's KSM merges of it (`host.ksm`, as the simulator counts it) the host holds once.
fn need(vm: &VmSpec, overhead: Bytes, ksm: f64) -> (Bytes, NeedBasis) {
    let w = &vm.workload;
    let ws = w
        .points
        .iter()
        .map(|p| p.1)
        .fold(w.working_set.max(w.peak), Bytes::max);
    let cache = w.points.iter().map(|p| p.2).fold(w.page_cache, Bytes::max);
    let hot_cache = Bytes::from_f64(cache.as_f64() * w.cache_hot);
    let peak = (ws + hot_cache + vm.kernel + vm.pinned).min(vm.memory);
    let (held, basis) = if vm.resizable() {
        (
            vm.floor().unwrap_or(Bytes::ZERO).min(vm.memory),
            NeedBasis::Floor,
        )
    } else {
        (vm.memory, NeedBasis::NotResizable)
    };
    let (guest, basis) = if held > peak {
        (held, basis)
    } else {
        (peak, NeedBasis::Peak)
    };
    // Pinned memory (huge pages, VFIO) is not KSM's to merge.
    let pinned = vm.pinned.min(guest);
    let mergeable = (guest - pinned).as_f64() * (1.0 - ksm.clamp(0.0, 1.0));
    (Bytes::from_f64(mergeable) + pinned + overhead, basis)
}

/// A group's need: its worst member's, and what sets it.
fn group_need(g: &Group, overhead: Bytes, ksm: f64) -> (Bytes, NeedBasis) {
    g.members
        .iter()
        .map(|v| need(v, overhead, ksm))
        .max_by_key(|&(n, _)| n)
        .unwrap_or((Bytes::ZERO, NeedBasis::Peak))
}

/// The scenario with each group's count replaced; new replicas copy the group's last one
/// and continue its start stagger.
fn scaled(scenario: &Scenario, groups: &[Group], counts: &[u32]) -> Scenario {
    let mut s = scenario.clone();
    s.vms.clear();
    for (g, &n) in groups.iter().zip(counts) {
        let single = g.members.len() == 1 && g.members[0].name == g.base;
        let stagger = match g.members.as_slice() {
            [a, b, ..] => b.start.saturating_sub(a.start),
            _ => Millis::ZERO,
        };
        let last = g.members.last().expect("a group has at least one VM");
        for r in 0..n as usize {
            let mut vm = match g.members.get(r) {
                Some(vm) => vm.clone(),
                None => {
                    let mut vm = last.clone();
                    let extra = (r + 1 - g.members.len()) as u64;
                    vm.start = Millis(last.start.0 + stagger.0 * extra);
                    vm
                }
            };
            vm.name = if single && n == 1 {
                g.base.clone()
            } else {
                format!("{}-{r}", g.base)
            };
            s.vms.push(vm);
        }
    }
    s.vms.sort_by(|a, b| a.name.cmp(&b.name));
    s
}

fn parse_ratios(text: &str) -> Result<Vec<f64>, InputError> {
    let ratios: Vec<f64> = text
        .split(',')
        .map(|r| {
            let r = r.trim();
            match r.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 && v <= MAX_RATIO => Ok(v),
                _ => Err(InputError(format!(
                    "--ratios: `{r}` is not a ratio in (0, {MAX_RATIO}] (write them like 1.0,1.5,2.0)"
                ))),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(ratios)
}

#[derive(Debug, Serialize)]
struct Predicted {
    deficit_gib: f64,
    swap_io_mib_s: f64,
    /// One line each: where the two numbers come from.
    deficit: String,
    swap_io: String,
}

#[derive(Debug, Serialize)]
struct Simulated {
    reclaimed_gib_hours: f64,
    stall_percent: f64,
    guest_oom_kills: u64,
    host_oom_kills: u64,
    host_swap_out_gib: f64,
    host_swap_in_gib: f64,
    guest_swap_in_gib: f64,
    /// (host swap-out + host swap-in + guest swap-in) ÷ duration: the mean swap traffic
    /// the model's deficit stands for (the policy squeezes guests before the host swaps, so
    /// most of it is the guests' own swap).
    swap_io_mib_s: f64,
    peak_host_used_gib: f64,
}

#[derive(Debug, Serialize)]
struct Row {
    /// The ratio asked for.
    requested_ratio: f64,
    /// Σ configured ÷ usable after rounding the counts to whole VMs.
    ratio: f64,
    vms: u64,
    /// One per group, in `groups` order.
    counts: Vec<u32>,
    configured_gib: f64,
    predicted: Predicted,
    simulated: Simulated,
    /// Stall ≤ 0.5 % of VM-time and no OOM kill, guest or host.
    safe: bool,
}

#[derive(Debug, Serialize)]
struct Model {
    usable_gib: f64,
    swap_bandwidth_mib_s: f64,
    safe_fraction: f64,
    swap_io_per_deficit: f64,
    working_set_fraction: f64,
    groups: Vec<VmGroup>,
    /// What sets each group's need, in the order of `groups`.
    need_basis: Vec<NeedBasis>,
    /// The share of guest memory KSM merges (`host.ksm`): needs count the rest.
    ksm_merged_share: f64,
    r_max: Estimate,
    max_safe_fleet: Fleet,
}

#[derive(Debug, Serialize)]
struct Plan {
    scenario: String,
    policy: String,
    seed: u64,
    duration_s: f64,
    safe_stall_percent: f64,
    model: Model,
    rows: Vec<Row>,
}

pub fn run(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let ratios = parse_ratios(&args.ratios)?;
    let mut scenario = load_scenario(args.scenario.as_deref())?;
    super::output_dir(&args.out)?;
    // Shorter only, as for `sim`: the scenario's workloads (a leak's rate, a trace) were
    // checked for its own length, and a longer run outgrows them.
    super::sim::cut_short(&mut scenario, args.duration.as_deref(), true)?;
    if let Some(b) = &args.swap_bandwidth {
        let Rate(bw) = b
            .parse()
            .map_err(|e| InputError(format!("--swap-bandwidth: {e}")))?;
        if bw == Bytes::ZERO {
            return Err(InputError("--swap-bandwidth: must be positive".into()).into());
        }
        scenario.host.swap_bandwidth = bw;
    }
    let safe_fraction: f64 = args
        .safe_fraction
        .parse()
        .ok()
        .filter(|f: &f64| *f > 0.0 && *f <= 1.0)
        .ok_or_else(|| {
            InputError(format!(
                "--safe-fraction: `{}` is not a fraction in (0, 1]",
                args.safe_fraction
            ))
        })?;
    let swap_io_per_deficit: f64 = match &args.swap_io_per_deficit {
        None => DEFAULT_SWAP_IO_PER_DEFICIT,
        Some(k) => k
            .parse()
            .ok()
            // A missing hot page re-touched between once an hour and a thousand times a
            // second: outside that, R_max comes out as 10^300 or 1 for any host.
            .filter(|k: &f64| (1e-4..=1e3).contains(k))
            .ok_or_else(|| {
                InputError(format!(
                    "--swap-io-per-deficit: `{k}` is not a number between 0.0001 and 1000 (per second)"
                ))
            })?,
    };

    let groups = groups(&scenario);
    let host = &scenario.host;
    // Each group's worst member: replicas of one table share a workload.
    let needs: Vec<(Bytes, NeedBasis)> = groups
        .iter()
        .map(|g| group_need(g, host.vm_overhead, host.ksm))
        .collect();
    let inputs = CapacityInputs {
        usable: host.memory - host.reserve,
        groups: groups
            .iter()
            .zip(&needs)
            .map(|(g, &(need, _))| VmGroup {
                name: g.base.clone(),
                count: g.members.len() as u32,
                configured: g.members[0].memory,
                need,
            })
            .collect(),
        swap_io_per_deficit,
        swap_bandwidth: host.swap_bandwidth,
        safe_fraction,
    };
    inputs
        .validate()
        .map_err(|e| InputError(format!("{}: {e}", scenario.name)))?;
    let r_max = inputs.r_max();
    let fleet = inputs.max_safe_fleet();

    // Each ratio's fleet: every group's count × R·U / Σ configured, rounded to whole VMs.
    let base_scale = inputs.usable.as_f64() / inputs.configured_total();
    let fleets: Vec<(f64, Vec<u32>)> = ratios
        .iter()
        .map(|&r| {
            let counts = inputs.scaled_counts(r * base_scale);
            let vms: u64 = counts.iter().map(|&c| u64::from(c)).sum();
            if counts.iter().all(|&c| c == 0) {
                // A group keeps a VM from count × scale ≥ ½ (rounded to whole VMs).
                let most = inputs.groups.iter().map(|g| g.count).max().unwrap_or(1);
                // Rounded up, so the ratio printed keeps one.
                let least = (50.0 / (base_scale * f64::from(most.max(1)))).ceil() / 100.0;
                Err(InputError(format!(
                    "--ratios: {r} leaves no whole VM of `{}` on the host: its VMs are \
                     configured with {} in all and the host holds {} after its reserve; \
                     ratios from {least:.2} keep at least one",
                    scenario.name,
                    Bytes::from_f64(inputs.configured_total()),
                    inputs.usable
                )))
            } else if vms > aerostat_sim::scenario::MAX_VMS as u64 {
                // A scenario file is held to the same limit: each VM is simulated.
                Err(InputError(format!(
                    "--ratios: {r} puts {vms} VMs of `{}` on the host; a simulated host holds at most {}",
                    scenario.name,
                    aerostat_sim::scenario::MAX_VMS
                )))
            } else {
                Ok((r, counts))
            }
        })
        .collect::<Result<_, _>>()?;

    let runs: Vec<Scenario> = fleets
        .iter()
        .map(|(_, c)| scaled(&scenario, &groups, c))
        .collect();
    let total: u64 = runs
        .iter()
        .map(|s| Simulation::new(s.clone(), RunOptions::new(args.policy)).total_ticks())
        .sum();
    let bar = report::progress_bar(total, "plan", args.quiet);
    let summaries: Vec<Summary> = runs
        .par_iter()
        .map(|s| {
            let mut opts = RunOptions::new(args.policy);
            opts.samples = 0;
            let mut sim = Simulation::new(s.clone(), opts);
            let chunk = (sim.total_ticks() / 100).max(1);
            while !sim.done() {
                sim.advance(chunk);
                bar.inc(chunk);
            }
            sim.finish().summary
        })
        .collect();
    bar.finish_and_clear();

    let duration_s = scenario.duration.as_secs_f64();
    let rows: Vec<Row> = fleets
        .iter()
        .zip(&summaries)
        .map(|((r, counts), s)| {
            let (ratio, deficit, io) = inputs.at_counts(counts);
            // The same numbers through the model's own functions, for their explanations.
            let mut at = inputs.clone();
            for (g, &c) in at.groups.iter_mut().zip(counts) {
                g.count = c;
            }
            let safe = s.stall_percent <= SAFE_STALL_PERCENT
                && s.guest_oom_kills == 0
                && s.host_oom_kills == 0;
            Row {
                requested_ratio: *r,
                ratio,
                vms: counts.iter().map(|&c| u64::from(c)).sum(),
                counts: counts.clone(),
                configured_gib: ratio * inputs.usable.as_f64() / GIB,
                predicted: Predicted {
                    deficit_gib: deficit / GIB,
                    swap_io_mib_s: io / MIB,
                    deficit: at.deficit(at.ratio()).explanation,
                    swap_io: at.swap_io(at.ratio()).explanation,
                },
                simulated: Simulated {
                    reclaimed_gib_hours: s.reclaimed_gib_hours,
                    stall_percent: s.stall_percent,
                    guest_oom_kills: s.guest_oom_kills,
                    host_oom_kills: s.host_oom_kills,
                    host_swap_out_gib: s.host_swap_out_gib,
                    host_swap_in_gib: s.host_swap_in_gib,
                    guest_swap_in_gib: s.guest_swap_in_gib,
                    swap_io_mib_s: (s.host_swap_out_gib + s.host_swap_in_gib + s.guest_swap_in_gib)
                        * GIB
                        / MIB
                        / duration_s.max(1e-9),
                    peak_host_used_gib: s.peak_host_used_gib,
                },
                safe,
            }
        })
        .collect();

    let plan = Plan {
        scenario: scenario.name.clone(),
        policy: args.policy.as_str().to_string(),
        seed: scenario.seed,
        duration_s,
        safe_stall_percent: SAFE_STALL_PERCENT,
        model: Model {
            usable_gib: inputs.usable.as_f64() / GIB,
            swap_bandwidth_mib_s: inputs.swap_bandwidth.as_f64() / MIB,
            safe_fraction,
            swap_io_per_deficit,
            working_set_fraction: inputs.working_set_fraction(),
            groups: inputs.groups.clone(),
            need_basis: needs.iter().map(|&(_, basis)| basis).collect(),
            ksm_merged_share: host.ksm,
            r_max,
            max_safe_fleet: fleet,
        },
        rows,
    };
    print(&plan, &scenario);
    write(&args.out, &plan)?;
    crate::say!("wrote {}/{{plan.json,plan.svg}}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn print(plan: &Plan, scenario: &Scenario) {
    let m = &plan.model;
    crate::say!(
        "{}: {} VMs, usable {:.1} GiB (host {} − reserve {}), swap {:.0} MiB/s, safe {:.0} %",
        plan.scenario,
        scenario.vms.len(),
        m.usable_gib,
        scenario.host.memory,
        scenario.host.reserve,
        m.swap_bandwidth_mib_s,
        100.0 * m.safe_fraction
    );
    for (g, basis) in m.groups.iter().zip(&m.need_basis) {
        crate::say!(
            "  {} × {}: configured {}, needs {} resident: {}",
            g.count,
            g.name,
            g.configured,
            g.need,
            basis.describe()
        );
    }
    if m.ksm_merged_share > 0.0 {
        crate::say!(
            "  (guest memory counted × {:.2}: KSM merges {:.0} % of it, host.ksm)",
            1.0 - m.ksm_merged_share,
            100.0 * m.ksm_merged_share
        );
    }
    crate::say!("{}", m.r_max.explanation);
    crate::say!("largest safe whole fleet, {}", m.max_safe_fleet.explanation);
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "R",
        "VMs",
        "Σ configured / usable GiB",
        "reclaimed GiB·h",
        "stall %",
        "guest OOM",
        "host OOM",
        "host swap-out GiB",
        "predicted swap I/O MiB/s (safe ≤)",
        "simulated swap I/O MiB/s, mean",
        "safe",
    ]);
    let num = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    let limit = m.safe_fraction * m.swap_bandwidth_mib_s;
    for r in &plan.rows {
        t.add_row(vec![
            num(format!("{:.2}", r.ratio)),
            num(r.vms.to_string()),
            num(format!("{:.1} / {:.1}", r.configured_gib, m.usable_gib)),
            num(format!("{:.1}", r.simulated.reclaimed_gib_hours)),
            num(format!("{:.3}", r.simulated.stall_percent)),
            num(r.simulated.guest_oom_kills.to_string()),
            num(r.simulated.host_oom_kills.to_string()),
            num(format!("{:.2}", r.simulated.host_swap_out_gib)),
            num(format!("{:.0} ({limit:.0})", r.predicted.swap_io_mib_s)),
            num(format!("{:.1}", r.simulated.swap_io_mib_s)),
            Cell::new(if r.safe { "yes" } else { "NO" }),
        ]);
    }
    crate::say!("{t}");
    crate::say!(
        "policy {}, {} per run; safe = stall ≤ {} % of VM-time and no OOM kill",
        plan.policy,
        Millis((plan.duration_s * 1000.0) as u64),
        SAFE_STALL_PERCENT
    );
}

fn write(dir: &Path, plan: &Plan) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(plan)? + "\n";
    std::fs::write(dir.join("plan.json"), json)
        .with_context(|| format!("writing {}/plan.json", dir.display()))?;
    let points: Vec<plots::PlanPoint> = plan
        .rows
        .iter()
        .map(|r| plots::PlanPoint {
            ratio: r.ratio,
            stall_percent: r.simulated.stall_percent,
            predicted_io_mib_s: r.predicted.swap_io_mib_s,
            simulated_io_mib_s: r.simulated.swap_io_mib_s,
        })
        .collect();
    plots::plan(
        &dir.join("plan.svg"),
        &format!("{} · policy {}", plan.scenario, plan.policy),
        &points,
        plan.model.r_max.value,
        plan.model.safe_fraction * plan.model.swap_bandwidth_mib_s,
        SAFE_STALL_PERCENT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names() {
        assert_eq!(base_name("web-11"), "web");
        assert_eq!(base_name("db"), "db");
        assert_eq!(base_name("web-a"), "web-a");
        assert_eq!(base_name("my-db-0"), "my-db");
    }

    #[test]
    fn ratios_name_the_flag() {
        assert_eq!(parse_ratios("1, 1.5").ok(), Some(vec![1.0, 1.5]));
        for bad in ["", "x", "0", "-1", "1,,2", "100"] {
            let e = parse_ratios(bad).expect_err(bad);
            assert!(e.0.starts_with("--ratios:"), "{}", e.0);
        }
    }

    /// A VM's need is its peak, unless a floor or the lack of any device that resizes it
    /// keeps more of it on the host.
    #[test]
    fn need_counts_what_no_policy_can_take() {
        let vm = |extra: &str| {
            let text = format!(
                "[scenario]\nname = \"n\"\nduration = \"1h\"\n[host]\nmemory = \"64GiB\"\nreserve = \"4GiB\"\nswap = \"0B\"\n\
                 [[vm]]\nname = \"a\"\nmemory = \"8GiB\"\n{extra}\n\
                 [vm.workload]\nkind = \"steady\"\nworking_set = \"2GiB\"\npage_cache = \"0B\"\n"
            );
            Scenario::parse(&text, Path::new("n.toml"))
                .expect("the test scenario parses")
                .vms
                .remove(0)
        };
        let overhead = Bytes::mib(100);
        let peak = vm("");
        let (n, basis) = need(&peak, overhead, 0.0);
        assert_eq!(basis, NeedBasis::Peak);
        assert_eq!(n, Bytes::gib(2) + peak.kernel + overhead);

        let floored = vm("min = \"6GiB\"");
        assert_eq!(
            need(&floored, overhead, 0.0),
            (Bytes::gib(6) + overhead, NeedBasis::Floor)
        );

        let fixed = vm("balloon = false");
        assert_eq!(
            need(&fixed, overhead, 0.0),
            (Bytes::gib(8) + overhead, NeedBasis::NotResizable)
        );

        // A floor below the peak leaves the peak.
        let low_floor = vm("min = \"1GiB\"");
        assert_eq!(need(&low_floor, overhead, 0.0), (n, NeedBasis::Peak));

        // What KSM merges of the guest's memory the host holds once; QEMU's overhead is
        // not merged.
        assert_eq!(
            need(&floored, overhead, 0.25),
            (Bytes::mib(6 * 1024 * 3 / 4) + overhead, NeedBasis::Floor)
        );

        // A virtio-mem guest without a balloon keeps its boot memory: its floor.
        let vmem = vm("balloon = false\nvirtio_mem = { boot = \"5GiB\", block = \"128MiB\" }");
        assert_eq!(
            need(&vmem, overhead, 0.0),
            (Bytes::gib(5) + overhead, NeedBasis::Floor)
        );
    }

    #[test]
    fn scaling_keeps_names_unique_and_sorted() {
        let s = load_scenario(None).expect("the demo parses");
        let g = groups(&s);
        assert_eq!(g.len(), 1);
        let big = scaled(&s, &g, &[20]);
        assert_eq!(big.vms.len(), 20);
        let mut names: Vec<&str> = big.vms.iter().map(|v| v.name.as_str()).collect();
        let sorted = names.clone();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names, sorted);
    }
}
