//! Scenario files nobody wrote by hand: random values for every key of the schema,
//! sensible and not. A file the simulator refuses gets an error naming the file; a file it
//! accepts runs under every policy without a panic, with every reported number finite and
//! within what the host could hold, and with no guest ever sent below its floor.

mod common;

use std::fmt::Write;
use std::path::Path;

use aerostat_core::{Bytes, PolicyKind};
use aerostat_sim::scenario::default_kernel;
use aerostat_sim::{RunOptions, Scenario, run};
use proptest::prelude::*;

use common::assert_floors_kept;

const KINDS: [&str; 6] = ["steady", "idle", "diurnal", "burst", "ramp", "leak"];
const CLASSES: [&str; 5] = ["general", "stateless", "database", "batch", "interactive"];
const STATS: [&str; 5] = ["full", "classic", "none", "lying", "greedy"];

/// One `[[vm]]` group, sizes in MiB.
#[derive(Debug, Clone)]
struct Group {
    count: u32,
    memory: u64,
    min: Option<u64>,
    swap: Option<u64>,
    class: Option<usize>,
    priority: Option<f64>,
    headroom: Option<u64>,
    start_min: Option<u64>,
    deflate_on_oom: bool,
    stats: Option<usize>,
    kind: usize,
    working_set: u64,
    peak: u64,
    page_cache: u64,
    cold: Option<u64>,
    cache_hot: Option<f64>,
    noise: Option<f64>,
    at_min: u64,
    rise_s: u64,
    /// A virtio-mem device above boot memory: where boot memory lies between the kernel and
    /// the guest's size (a share), and whether the guest also has a balloon.
    virtio_mem: Option<(f64, bool)>,
}

impl Group {
    /// Boot memory of a virtio-mem guest, in MiB: above its kernel, below its memory.
    fn boot_mib(&self, share: f64) -> u64 {
        let kernel = default_kernel(Bytes::mib(self.memory)).0 >> 20;
        kernel + 1 + (share * (self.memory.saturating_sub(kernel + 2)) as f64) as u64
    }

    /// The lowest memory a policy may give each guest: its floor, or its boot memory when
    /// only a virtio-mem device can resize it.
    fn floor_mib(&self) -> u64 {
        let min = self.min.unwrap_or(0);
        match self.virtio_mem {
            Some((share, false)) => min.max(self.boot_mib(share)),
            _ => min,
        }
    }
}

/// Sizes are drawn as shares. `fitting`: shares of the guest's usable memory (its memory
/// less the kernel's) that fit it together (a floor, headroom, working set, its rise to
/// the peak, cold anon), so that the file is accepted and runs. Otherwise shares of 16 GiB
/// whatever the guest's size: a working set above the guest's memory, a floor above it, a
/// peak below the working set must be refused with an error.
fn group(fitting: bool) -> impl Strategy<Value = Group> {
    (
        (
            1u32..=6,
            256u64..=16384,
            prop::option::of(0.0f64..=0.5),
            prop::option::of(0u64..=4096),
            prop::option::of(0..CLASSES.len()),
            prop::option::of(0.1f64..=4.0),
            prop::option::of(0.0f64..=0.3),
            prop::option::of(0u64..=20),
            any::<bool>(),
            prop::option::of(0..STATS.len()),
        ),
        (
            0..KINDS.len(),
            0.0f64..=0.4,
            0.0f64..=0.25,
            0u64..=8192,
            prop::option::of(0.0f64..=0.15),
            prop::option::of(0.0f64..=1.0),
            prop::option::of(0.0f64..=0.3),
            0u64..=25,
            1u64..=300,
            prop::option::of((0.0f64..=1.0, any::<bool>())),
        ),
    )
        .prop_map(move |(a, b)| {
            let usable = a.1 - (default_kernel(Bytes::mib(a.1)).0 >> 20) - 1;
            let base = if fitting {
                usable as f64
            } else {
                16384.0 / 0.4
            };
            let mib = |share: f64| (base * share) as u64;
            let working_set = mib(b.1);
            Group {
                count: a.0,
                memory: a.1,
                min: a.2.map(mib),
                swap: a.3,
                class: a.4,
                priority: a.5,
                headroom: a.6.map(mib),
                start_min: a.7,
                deflate_on_oom: a.8,
                stats: a.9,
                kind: b.0,
                working_set,
                peak: if fitting {
                    working_set + mib(b.2)
                } else {
                    mib(b.2)
                },
                // A page cache larger than the guest can hold is refused.
                page_cache: if fitting { b.3.min(usable) } else { b.3 },
                cold: b.4.map(mib),
                cache_hot: b.5,
                noise: b.6,
                // Workload times count from the VM's start: a burst after the end of the
                // 30 min run is refused (it would never happen).
                at_min: b.7.min(29 - a.7.unwrap_or(0)),
                rise_s: b.8,
                virtio_mem: b.9,
            }
        })
}

#[derive(Debug, Clone)]
struct Host {
    memory_gib: u64,
    reserve_mib: u64,
    swap_gib: u64,
    swap_bw_mib: u64,
    seed: u64,
}

fn host() -> impl Strategy<Value = Host> {
    (
        4u64..=128,
        0u64..=8192,
        0u64..=32,
        50u64..=2000,
        any::<u64>(),
    )
        .prop_map(|h| Host {
            memory_gib: h.0,
            reserve_mib: h.1,
            swap_gib: h.2,
            swap_bw_mib: h.3,
            seed: h.4,
        })
}

/// `fitting`: the host is at least big enough for the guests' floors and kernels plus its
/// reserve (the simulator refuses a host that cannot even hold those).
fn scenario_text(host: &Host, groups: &[Group], fitting: bool) -> String {
    let mut host = host.clone();
    if fitting {
        let floors_mib: u64 = groups
            .iter()
            .map(|g| {
                let kernel = default_kernel(Bytes::mib(g.memory)).0 >> 20;
                u64::from(g.count) * (g.floor_mib() + kernel + 1)
            })
            .sum();
        let need_gib = (floors_mib + host.reserve_mib).div_ceil(1024) + 1;
        host.memory_gib = host.memory_gib.max(need_gib);
    }
    let mut t = String::new();
    let _ = write!(
        t,
        "[scenario]\nname = \"random\"\nduration = \"30m\"\nseed = {}\n\n[host]\nmemory = \"{}GiB\"\n\
         reserve = \"{}MiB\"\nswap = \"{}GiB\"\nswap_bandwidth = \"{}MiB/s\"\n",
        host.seed % 1_000_000,
        host.memory_gib,
        host.reserve_mib,
        host.swap_gib,
        host.swap_bw_mib
    );
    for (i, g) in groups.iter().enumerate() {
        let _ = write!(
            t,
            "\n[[vm]]\nname = \"g{i}\"\ncount = {}\nmemory = \"{}MiB\"\n",
            g.count, g.memory
        );
        let opt = |t: &mut String, key: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(t, "{key} = {v}");
            }
        };
        opt(&mut t, "min", g.min.map(|v| format!("\"{v}MiB\"")));
        opt(&mut t, "swap", g.swap.map(|v| format!("\"{v}MiB\"")));
        opt(
            &mut t,
            "class",
            g.class.map(|c| format!("\"{}\"", CLASSES[c])),
        );
        opt(&mut t, "priority", g.priority.map(|p| format!("{p}")));
        opt(
            &mut t,
            "headroom",
            g.headroom.map(|v| format!("\"{v}MiB\"")),
        );
        opt(&mut t, "start", g.start_min.map(|m| format!("\"{m}m\"")));
        opt(
            &mut t,
            "stats",
            g.stats.map(|s| format!("\"{}\"", STATS[s])),
        );
        if g.deflate_on_oom {
            t.push_str("deflate_on_oom = true\n");
        }
        if let Some((share, balloon)) = g.virtio_mem {
            let boot = g.boot_mib(share);
            let _ = writeln!(
                t,
                "virtio_mem = {{ boot = \"{boot}MiB\", block = \"1MiB\" }}"
            );
            if !balloon {
                t.push_str("balloon = false\n");
            }
        }
        let kind = KINDS[g.kind];
        let _ = write!(
            t,
            "[vm.workload]\nkind = \"{kind}\"\nworking_set = \"{}MiB\"\npage_cache = \"{}MiB\"\n",
            g.working_set, g.page_cache
        );
        opt(&mut t, "cold", g.cold.map(|v| format!("\"{v}MiB\"")));
        opt(&mut t, "cache_hot", g.cache_hot.map(|v| format!("{v}")));
        opt(&mut t, "noise", g.noise.map(|v| format!("{v}")));
        match kind {
            "diurnal" => {
                let _ = writeln!(t, "peak = \"{}MiB\"\nperiod = \"20m\"", g.peak);
            }
            "burst" | "ramp" => {
                let _ = writeln!(
                    t,
                    "peak = \"{}MiB\"\nat = \"{}m\"\nrise = \"{}s\"",
                    g.peak, g.at_min, g.rise_s
                );
            }
            "leak" => {
                let _ = writeln!(t, "rate = \"{}MiB/h\"", g.peak);
            }
            _ => {}
        }
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_scenarios_run_cleanly_under_every_policy(
        host in host(),
        groups in prop::collection::vec(group(true), 1..=4),
    ) {
        let text = scenario_text(&host, &groups, true);
        check(&text, true)?;
    }

    #[test]
    fn random_values_are_refused_naming_the_file_or_run_cleanly(
        host in host(),
        groups in prop::collection::vec(group(false), 1..=4),
    ) {
        let text = scenario_text(&host, &groups, false);
        check(&text, false)?;
    }
}

/// Parses `text` and, if the simulator accepts it, runs it under every policy and checks
/// the run. `must_accept`: a refusal is a failure too.
fn check(text: &str, must_accept: bool) -> Result<(), TestCaseError> {
    let path = Path::new("random.toml");
    let parsed = std::panic::catch_unwind(|| Scenario::parse(text, path))
        .unwrap_or_else(|_| panic!("the parser panicked on:\n{text}"));
    let scenario = match parsed {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!must_accept, "refused: {msg}\n{text}");
            prop_assert!(
                msg.starts_with("random.toml:"),
                "an error without the file and line: {msg}\n{text}"
            );
            return Ok(());
        }
    };
    let configured_gib =
        scenario.vms.iter().map(|v| v.memory.as_f64()).sum::<f64>() / (1u64 << 30) as f64;
    let hours = 0.5;
    for policy in PolicyKind::ALL {
        let mut opts = RunOptions::new(policy);
        opts.log_actions = true;
        let result = std::panic::catch_unwind(|| run(&scenario, opts))
            .unwrap_or_else(|_| panic!("{policy} panicked on:\n{text}"));
        let s = &result.summary;
        let what = format!("{policy} on:\n{text}");
        for (name, v) in [
            ("reclaimed_gib_hours", s.reclaimed_gib_hours),
            (
                "oracle_reclaimable_gib_hours",
                s.oracle_reclaimable_gib_hours,
            ),
            ("guest_stall_seconds", s.guest_stall_seconds),
            ("guest_swap_in_gib", s.guest_swap_in_gib),
            ("host_swap_out_gib", s.host_swap_out_gib),
            ("vm_hours", s.vm_hours),
        ] {
            prop_assert!(v.is_finite() && v >= 0.0, "{name} = {v} for {what}");
        }
        // Nothing hands back more than the guests' configured memory for the whole run.
        prop_assert!(
            s.reclaimed_gib_hours <= configured_gib * hours + 1e-6,
            "{what}"
        );
        prop_assert!(
            s.oracle_reclaimable_gib_hours <= configured_gib * hours + 1e-6,
            "{what}"
        );
        // A guest stalls at most the time it runs (migration pauses aside: no escape
        // here). The summary keeps six decimals of hours: 4 ms.
        prop_assert!(
            s.guest_stall_seconds <= s.vm_hours * 3600.0 + 0.01,
            "{what}"
        );
        assert_floors_kept(&scenario, &result, &what);
    }
    Ok(())
}
