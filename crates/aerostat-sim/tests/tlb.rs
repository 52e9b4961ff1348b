//! The TLB shootdown estimate of a `[tlb]` table (`aerostat_sim::tlb`, seed 000): what the
//! balloons' takings flush from the guests' TLBs, reported beside the stall, never in it.

use std::path::Path;

use aerostat_core::PolicyKind;
use aerostat_sim::{RunOptions, Scenario, Summary, run};

/// Four idle 4 GiB guests on a 16 GiB host: every policy that balloons takes most of them.
fn scenario(tlb: &str) -> Scenario {
    let text = format!(
        r#"
[scenario]
name = "tlb"
duration = "30m"
seed = 5
[host]
memory = "16GiB"
reserve = "2GiB"
{tlb}
[[vm]]
name = "vm"
count = 4
memory = "4GiB"
min = "512MiB"
[vm.workload]
kind = "steady"
working_set = "1GiB"
page_cache = "512MiB"
"#
    );
    Scenario::parse(&text, Path::new("tlb.toml")).expect("valid scenario")
}

fn summary(tlb: &str, policy: PolicyKind) -> Summary {
    run(&scenario(tlb), RunOptions::new(policy)).summary
}

#[test]
fn the_estimate_follows_the_seeds_formula_and_changes_nothing_else() {
    let without = summary("", PolicyKind::Aerostat);
    assert_eq!(without.tlb_entries_flushed, None);
    assert_eq!(without.tlb_refill_seconds, None);
    assert!(
        without
            .per_vm
            .iter()
            .all(|v| v.tlb_entries_flushed.is_none())
    );

    let two = summary(
        "[tlb]\nvcpus = 2\nentries = 1536\nrefill = \"60ns\"",
        PolicyKind::Aerostat,
    );
    let four = summary(
        "[tlb]\nvcpus = 4\nentries = 1536\nrefill = \"60ns\"",
        PolicyKind::Aerostat,
    );
    let flushed = two.tlb_entries_flushed.expect("counted");
    // The balloons took GiBs from 1.5 GiB working sets: each guest lost its whole TLB, 2 ×
    // 1536 entries, at least once over, and the estimate scales with the vCPUs.
    assert!(flushed > 4.0 * 2.0 * 1536.0, "{flushed}");
    let ratio = four.tlb_entries_flushed.expect("counted") / flushed;
    assert!((ratio - 2.0).abs() < 1e-6, "{ratio}");
    let refill = two.tlb_refill_seconds.expect("counted");
    assert!((refill - flushed * 60e-9).abs() < 1e-6, "{refill}");
    let per_vm: f64 = two
        .per_vm
        .iter()
        .filter_map(|v| v.tlb_entries_flushed)
        .sum();
    assert!((per_vm - flushed).abs() < 1.0, "{per_vm} vs {flushed}");

    // Everything the policy judgement counts is the same with and without the estimate.
    let mut same = two.clone();
    same.tlb_entries_flushed = None;
    same.tlb_refill_seconds = None;
    same.per_vm
        .iter_mut()
        .for_each(|v| v.tlb_entries_flushed = None);
    assert_eq!(same, without);

    // A policy that never balloons flushes nothing.
    let quiet = summary("[tlb]", PolicyKind::Static);
    assert_eq!(quiet.tlb_entries_flushed, Some(0.0));
}

#[test]
fn a_bad_tlb_table_names_its_key_and_line() {
    for (table, key) in [
        ("[tlb]\nvcpus = 0", "tlb.vcpus"),
        ("[tlb]\nentries = 0", "tlb.entries"),
        ("[tlb]\nrefill = \"0ns\"", "tlb.refill"),
    ] {
        let text = format!(
            "[scenario]\nname = \"t\"\nduration = \"1h\"\nseed = 1\n[host]\nmemory = \"8GiB\"\nreserve = \"1GiB\"\n{table}\n[[vm]]\nname = \"v\"\nmemory = \"1GiB\"\n[vm.workload]\nkind = \"idle\"\nworking_set = \"100MiB\"\n"
        );
        let e = Scenario::parse(&text, Path::new("t.toml"))
            .expect_err(table)
            .to_string();
        assert!(e.starts_with("t.toml:8: `") && e.contains(key), "{e}");
    }
    let text = "[scenario]\nname = \"t\"\nduration = \"1h\"\nseed = 1\n[host]\nmemory = \"8GiB\"\nreserve = \"1GiB\"\n[tlb]\nrefill = \"60\"\n[[vm]]\nname = \"v\"\nmemory = \"1GiB\"\n[vm.workload]\nkind = \"idle\"\nworking_set = \"100MiB\"\n";
    let e = Scenario::parse(text, Path::new("t.toml"))
        .expect_err("no unit")
        .to_string();
    assert!(
        e.starts_with("t.toml:9: `tlb.refill`") && e.contains("ns or us"),
        "{e}"
    );
}
