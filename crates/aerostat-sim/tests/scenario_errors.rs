//! Scenario files: the schema from the issue parses, and every error names the file, the
//! key path and the line (`file:LINE: `key`: message`).

use std::path::{Path, PathBuf};

use aerostat_core::{Bytes, Millis, VmClass};
use aerostat_sim::Scenario;
use aerostat_sim::scenario::WorkloadKind;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The schema as the issue gives it (a copy of `scenarios/web-diurnal.toml`).
const ISSUE_SCHEMA: &str = r#"# A web fleet whose load follows the day: quiet at night, busy in the afternoon.
[scenario]
name = "web-diurnal"
description = "12 stateless web VMs on a 64 GiB host; working sets follow a 24 h cycle"
duration = "24h"
seed = 7

[host]
memory = "64GiB"
reserve = "4GiB"          # kept for the hypervisor, never given to guests
swap = "32GiB"
swap_bandwidth = "500MiB/s"

[[vm]]
name = "web"
count = 12                # replicas named web-0..web-11
memory = "6GiB"           # configured (maximum) guest memory
min = "1GiB"              # operator floor (optional)
swap = "2GiB"             # guest swap (optional, default none)
priority = 1.0            # higher = more important (optional)
class = "stateless"       # or "database", "batch", ... (optional)
stagger = "0s"
[vm.workload]
kind = "diurnal"          # steady | diurnal | burst | ramp | leak | idle | trace
working_set = "1.5GiB"    # baseline anonymous working set
peak = "4GiB"             # for diurnal/burst/ramp
period = "24h"            # for diurnal
page_cache = "1GiB"
"#;

const PATH: &str = "scenarios/under-test.toml";

/// The 1-based line of the first line of `text` that starts with `prefix` (after spaces).
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

/// Replaces the first line starting with `prefix` by `with` (which may hold several lines).
fn replace_line(text: &str, prefix: &str, with: &str) -> String {
    let n = line_of(text, prefix) - 1;
    text.lines()
        .enumerate()
        .map(|(i, l)| if i == n { with } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn error_of(text: &str, path: &Path) -> String {
    match Scenario::parse(text, path) {
        Ok(s) => panic!("scenario {} was accepted: {s:?}", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The error names the file and line as `file:LINE:` and mentions `key`.
#[track_caller]
fn assert_names(err: &str, path: &Path, line: usize, key: &str) {
    let at = format!("{}:{line}:", path.display());
    assert!(err.contains(&at), "error does not start at `{at}`:\n{err}");
    assert!(err.contains(key), "error does not name `{key}`:\n{err}");
}

#[test]
fn the_issue_schema_parses() {
    let s = Scenario::parse(ISSUE_SCHEMA, Path::new(PATH)).expect("the issue's schema parses");
    assert_eq!(s.name, "web-diurnal");
    assert_eq!(s.duration, Millis(24 * 3_600_000));
    assert_eq!(s.seed, 7);
    assert_eq!(s.tick, Millis::secs(1));
    assert_eq!(s.host.memory, Bytes::gib(64));
    assert_eq!(s.host.reserve, Bytes::gib(4));
    assert_eq!(s.host.swap, Bytes::gib(32));
    assert_eq!(s.host.swap_bandwidth, Bytes::mib(500));
    assert_eq!(s.vms.len(), 12);
    let mut names: Vec<String> = (0..12).map(|i| format!("web-{i}")).collect();
    names.sort();
    assert_eq!(
        s.vms.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
        names
    );
    for v in &s.vms {
        assert_eq!(v.memory, Bytes::gib(6));
        assert_eq!(v.min, Some(Bytes::gib(1)));
        assert_eq!(v.swap, Bytes::gib(2));
        assert_eq!(v.priority, 1.0);
        assert_eq!(v.class, VmClass::Stateless);
        assert_eq!(v.start, Millis::ZERO);
        assert!(v.balloon);
        assert_eq!(v.workload.kind, WorkloadKind::Diurnal);
        assert_eq!(v.workload.working_set, Bytes(3 * Bytes::GIB / 2));
        assert_eq!(v.workload.peak, Bytes::gib(4));
        assert_eq!(v.workload.period, Millis(24 * 3_600_000));
        assert_eq!(v.workload.page_cache, Bytes::gib(1));
    }
    // The shipped file is the same scenario.
    let shipped = Scenario::load(&repo_root().join("scenarios/web-diurnal.toml"))
        .expect("scenarios/web-diurnal.toml");
    assert_eq!(format!("{shipped:?}"), format!("{s:?}"));
}

#[test]
fn every_shipped_scenario_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo_root().join("scenarios")).expect("scenarios/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "only {n} scenarios found");
}

// --- Errors found by the TOML parser (stage one) ---------------------------------------

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = replace_line(ISSUE_SCHEMA, "min =", "min = \"1GiB\"\nminn = \"1GiB\"");
    let line = line_of(&text, "minn");
    let err = error_of(&text, Path::new(PATH));
    assert!(err.starts_with(&format!("{PATH}:{line}:")), "{err}");
    assert!(err.contains("unknown field `minn`"), "{err}");
}

#[test]
fn bad_unit_names_file_line_and_value() {
    let text = replace_line(ISSUE_SCHEMA, "memory = \"6GiB\"", "memory = \"4GB\"");
    let line = line_of(&text, "memory = \"4GB\"");
    let err = error_of(&text, Path::new(PATH));
    assert!(err.starts_with(&format!("{PATH}:{line}:")), "{err}");
    assert!(err.contains("unknown unit `GB` in `4GB`"), "{err}");
}

#[test]
fn a_duration_without_a_unit_says_so() {
    for bare in ["5", "1h30"] {
        let text = replace_line(
            ISSUE_SCHEMA,
            "duration =",
            &format!("duration = \"{bare}\""),
        );
        let err = error_of(&text, Path::new(PATH));
        assert_names(
            &err,
            Path::new(PATH),
            line_of(&text, "duration ="),
            "scenario.duration",
        );
        assert!(err.contains(&format!("missing unit in `{bare}`")), "{err}");
    }
}

/// A byte-order mark (some Windows editors write one) is not an error.
#[test]
fn a_byte_order_mark_is_skipped() {
    let text = format!("\u{feff}{ISSUE_SCHEMA}");
    Scenario::parse(&text, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
}

/// A run shorter than one tick would report the empty numbers of no run at all.
#[test]
fn a_run_shorter_than_a_tick_is_refused() {
    let text = replace_line(ISSUE_SCHEMA, "duration =", "duration = \"500ms\"");
    let err = error_of(&text, Path::new(PATH));
    assert!(err.contains("scenario.duration"), "{err}");
    assert!(err.contains("shorter than one tick (1s)"), "{err}");
}

/// QEMU's own memory is neither ballooned nor swapped: a host that cannot hold it beside the
/// reserve OOM-kills every guest in its first second, whatever the policy.
#[test]
fn a_host_smaller_than_the_vms_overheads_is_refused() {
    let text = replace_line(ISSUE_SCHEMA, "memory = \"64GiB\"", "memory = \"4800MiB\"");
    let text = replace_line(&text, "swap = \"32GiB\"", "swap = \"64GiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[host]"),
        "host.memory",
    );
    assert!(
        err.contains("QEMU overheads (12 × 64 MiB = 768 MiB)"),
        "{err}"
    );
}

/// `ksm_control = "mom"` runs KSM by MoM's rule: without `ksm` (what it can merge) there is
/// nothing to run, and a control that is not one of the two is named.
#[test]
fn ksm_control_is_checked() {
    let text = replace_line(
        ISSUE_SCHEMA,
        "swap = \"32GiB\"",
        "swap = \"32GiB\"\nksm_control = \"mom\"",
    );
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[host]"),
        "host.ksm_control",
    );
    assert!(err.contains("`host.ksm`"), "{err}");
    let ok = text.replace("ksm_control = \"mom\"", "ksm_control = \"mom\"\nksm = 0.2");
    Scenario::parse(&ok, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
    let bad = text.replace("\"mom\"", "\"ksmtuned\"");
    let err = error_of(&bad, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&bad, "ksm_control"),
        "host.ksm_control",
    );
}

/// A VM name that is not empty is not told it is.
#[test]
fn a_vm_name_with_other_characters_is_named() {
    let text = replace_line(ISSUE_SCHEMA, "name = \"web\"", "name = \"wéb\"");
    let err = error_of(&text, Path::new(PATH));
    assert!(err.contains("vm[0].name"), "{err}");
    assert!(err.contains("`wéb`: only ASCII letters"), "{err}");
}

/// What the brief asks of every error: `file:LINE:` and the key path. The TOML parser's
/// errors give `file: TOML parse error at line N, column C` and the bare field name.
#[test]
fn parse_errors_use_the_file_line_key_format() {
    let text = replace_line(ISSUE_SCHEMA, "min =", "min = \"1GiB\"\nminn = \"1GiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "minn"),
        "vm[0] (web).minn",
    );
    let text = replace_line(ISSUE_SCHEMA, "memory = \"6GiB\"", "memory = \"4GB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "memory = \"4GB\""),
        "vm[0] (web).memory",
    );
}

/// The issue's schema with its diurnal workload replaced by `workload` (a `phases` one).
fn with_phases(workload: &str) -> String {
    let text = replace_line(ISSUE_SCHEMA, "kind =", workload);
    let text = replace_line(&text, "working_set =", "");
    let text = replace_line(&text, "peak =", "");
    replace_line(&text, "period =", "")
}

/// A value inside an array of inline tables is named down to its element, with the VM's
/// name (a reviewer got `vm[0].workload.{ at` here); durations may be sums (`1h40m`).
#[test]
fn errors_in_inline_tables_name_the_array_element() {
    let phases = "kind = \"phases\"\nphases = [\n  { at = \"0s\", working_set = \"1GiB\" },\n  \
                  { at = \"1h40m\", working_set = \"2GiB\" },\n  { at = \"3h\", working_set = \"1GiB\", page_cache = \"1GB\" },\n]";
    let text = with_phases(phases);
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "{ at = \"3h\""),
        "`vm[0] (web).workload.phases[2].page_cache`",
    );
    assert!(err.contains("unknown unit `GB`"), "{err}");
    let fixed = text.replace("\"1GB\"", "\"1GiB\"");
    Scenario::parse(&fixed, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
    // The same array on one line, after a comment line holding `=` and `[`.
    let one_line = "# phases = [ at = \"x\" ]\nkind = \"phases\"\nphases = [{ at = \"0s\", \
                    working_set = \"1GiB\" }, { at = \"1h\", working_set = \"2TB\" }]";
    let text = with_phases(one_line);
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "phases = ["),
        "`vm[0] (web).workload.phases[1].working_set`",
    );
}

/// A field missing from a phase names the phase, in each way TOML writes an array of tables
/// (an audit got `phases[2].{at`, `phases[0].working_set` for the second element, and
/// `[vm.workload.phases]` without the VM).
#[test]
fn a_phase_missing_a_field_is_named_by_its_index() {
    let multi_line = "kind = \"phases\"\nphases = [\n  { at = \"0s\", working_set = \"1GiB\" },\n  \
                      { at = \"1h\", working_set = \"2GiB\" },\n  { at = \"2h\" },\n]";
    let one_line =
        "kind = \"phases\"\nphases = [{ at = \"0s\", working_set = \"1GiB\" }, { at = \"1h\" }]";
    for (workload, index) in [(multi_line, 2), (one_line, 1)] {
        let err = error_of(&with_phases(workload), Path::new(PATH));
        let want = format!("`vm[0] (web).workload.phases[{index}]`: missing field `working_set`");
        assert!(err.contains(&want), "{err}");
    }
    let tables = format!(
        "{}\n[[vm.workload.phases]]\nat = \"0s\"\nworking_set = \"1GiB\"\n\
         [[vm.workload.phases]]\nat = \"1h\"\nworking_set = \"2GB\"\n",
        with_phases("kind = \"phases\"")
    );
    let err = error_of(&tables, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&tables, "working_set = \"2GB\""),
        "`vm[0] (web).workload.phases[1].working_set`",
    );
}

/// An unknown key inside a phase is named itself, not the key before it (a reviewer got
/// `phases[0].working_set` for a misspelt key after it).
#[test]
fn an_unknown_key_in_a_phase_is_named_itself() {
    let phases = "kind = \"phases\"\nphases = [\n  { at = \"0s\", working_set = \"1GiB\" },\n  \
                  { at = \"1h\", working_set = \"2GiB\", pagecache = \"1GiB\" },\n]";
    let text = with_phases(phases);
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "{ at = \"1h\""),
        "`vm[0] (web).workload.phases[1].pagecache`",
    );
    assert!(err.contains("unknown field `pagecache`"), "{err}");
}

/// A missing field is blamed on its table, not on `scenario.[host]`.
#[test]
fn a_missing_field_names_its_table() {
    let text = replace_line(ISSUE_SCHEMA, "reserve =", "");
    let err = error_of(&text, Path::new(PATH));
    assert_names(&err, Path::new(PATH), line_of(&text, "[host]"), "`host`");
    assert!(err.contains("missing field `reserve`"), "{err}");
    assert!(!err.contains("scenario.[host]"), "{err}");
}

// --- Errors found by validation (stage two) --------------------------------------------

/// Pinned memory is not the workload's: a working set that fits the VM but not beside its
/// pinned memory is refused (a reviewer's VFIO guest otherwise OOM-killed under every policy).
#[test]
fn working_set_beside_pinned_memory() {
    let text = replace_line(ISSUE_SCHEMA, "min =", "min = \"1GiB\"\npinned = \"3GiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "vm[0] (web).workload.peak",
    );
    assert!(err.contains("and the pinned 3.00 GiB"), "{err}");
    let fits = replace_line(ISSUE_SCHEMA, "min =", "min = \"1GiB\"\npinned = \"1GiB\"");
    Scenario::parse(&fits, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn working_set_above_memory() {
    let text = replace_line(ISSUE_SCHEMA, "working_set =", "working_set = \"8GiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "`vm[0] (web).workload.working_set`",
    );
    assert!(err.contains("above the configured memory"), "{err}");
}

/// A field the workload's kind never reads is refused, naming what it does read.
#[test]
fn a_field_the_kind_ignores() {
    let text = replace_line(ISSUE_SCHEMA, "kind =", "kind = \"steady\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "`vm[0] (web).workload.peak`",
    );
    assert!(
        err.contains("does not apply to kind `steady` (it reads: working_set, page_cache"),
        "{err}"
    );
    let text = with_phases(
        "kind = \"phases\"\nrise = \"1m\"\nphases = [{ at = \"0s\", working_set = \"1GiB\" }]",
    );
    let err = error_of(&text, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.rise`: does not apply to kind `phases`"),
        "{err}"
    );
    // An empty list is set too (it passed silently until session 28).
    let text = replace_line(ISSUE_SCHEMA, "peak =", "peak = \"4GiB\"\nphases = []");
    let err = error_of(&text, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.phases`: does not apply to kind `diurnal`"),
        "{err}"
    );
}

/// Noise that can lift the working set past what the guest holds OOM-kills it under any
/// policy (a reviewer's 7.5 GiB boot peak with 5 % noise in an 8 GiB guest).
#[test]
fn noise_past_usable_memory() {
    let text = replace_line(ISSUE_SCHEMA, "peak =", "peak = \"5800MiB\"\nnoise = 0.05");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "`vm[0] (web).workload.noise`",
    );
    assert!(err.contains("at the top of its noise"), "{err}");
    let calm = text.replace("noise = 0.05", "noise = 0.01");
    Scenario::parse(&calm, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
}

/// A leak that outgrows the guest before the run ends.
#[test]
fn a_leak_that_outgrows_the_guest() {
    let text = replace_line(
        ISSUE_SCHEMA,
        "kind =",
        "kind = \"leak\"\nrate = \"200MiB/h\"",
    );
    let text = replace_line(&text, "peak =", "");
    let text = replace_line(&text, "period =", "");
    // 1.5 GiB + 24 h × 200 MiB: 6.2 GiB in a 6 GiB guest.
    let err = error_of(&text, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.rate`: the leak adds 4.69 GiB"),
        "{err}"
    );
    let slow = text.replace("200MiB/h", "100MiB/h");
    Scenario::parse(&slow, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
}

/// A leak needs a rate, and a rate of zero is not a leak.
#[test]
fn a_leak_without_growth_says_which() {
    let base = replace_line(ISSUE_SCHEMA, "peak =", "");
    let base = replace_line(&base, "period =", "");
    let missing = replace_line(&base, "kind =", "kind = \"leak\"");
    let err = error_of(&missing, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.rate`: required for a leak"),
        "{err}"
    );
    let zero = replace_line(&base, "kind =", "kind = \"leak\"\nrate = \"0MiB/h\"");
    let err = error_of(&zero, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.rate`: must be positive"),
        "{err}"
    );
}

/// Page cache the guest could never hold, in the workload or in a phase.
#[test]
fn page_cache_above_usable_memory() {
    let text = replace_line(ISSUE_SCHEMA, "page_cache =", "page_cache = \"6GiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.page_cache`: 6.00 GiB is above usable memory"),
        "{err}"
    );
    let text = with_phases(
        "kind = \"phases\"\nphases = [{ at = \"0s\", working_set = \"1GiB\", page_cache = \"7GiB\" }]",
    );
    let err = error_of(&text, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.phases[0].page_cache`"),
        "{err}"
    );
}

/// Something set to happen after the run ends never does: a VM's start, a burst's `at`, a
/// phase.
#[test]
fn times_after_the_end_of_the_run() {
    let text = replace_line(ISSUE_SCHEMA, "stagger =", "start = \"24h\"");
    let err = error_of(&text, Path::new(PATH));
    assert!(
        err.contains(
            "`vm[0] (web).start`: 24h is not before the end of the run (24h): the VM never starts"
        ),
        "{err}"
    );
    let text = replace_line(ISSUE_SCHEMA, "kind =", "kind = \"burst\"\nat = \"25h\"");
    let text = replace_line(&text, "period =", "");
    let err = error_of(&text, Path::new(PATH));
    assert!(err.contains("`vm[0] (web).workload.at`: 25h"), "{err}");
    let text = with_phases(
        "kind = \"phases\"\nphases = [{ at = \"0s\", working_set = \"1GiB\" }, { at = \"30h\", working_set = \"2GiB\" }]",
    );
    let err = error_of(&text, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.phases[1].at`: 30h"),
        "{err}"
    );
}

/// Workload times count from the VM's start (the engine steps a workload with the time since
/// it started): a burst 20 h into a VM that starts at 6 h of a 24 h run never happens, and a
/// replica staggered past the end never starts. 17 h after a start at 6 h still happens.
#[test]
fn workload_times_count_from_the_vms_start() {
    let burst = |at: &str| {
        let text = replace_line(ISSUE_SCHEMA, "stagger =", "start = \"6h\"");
        let text = replace_line(&text, "kind =", &format!("kind = \"burst\"\nat = \"{at}\""));
        replace_line(&text, "period =", "")
    };
    let err = error_of(&burst("20h"), Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.at`: 20h after the VM starts (at 6h)"),
        "{err}"
    );
    Scenario::parse(&burst("17h"), Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
    // Without `at`, the default (a third of the run, 8 h) counts from the start too: past
    // the end for a VM starting at 18 h.
    let text = replace_line(ISSUE_SCHEMA, "stagger =", "start = \"18h\"");
    let text = replace_line(&text, "kind =", "kind = \"burst\"");
    let text = replace_line(&text, "period =", "");
    let err = error_of(&text, Path::new(PATH));
    assert!(
        err.contains("`vm[0] (web).workload.at`: not set, and its default (8h"),
        "{err}"
    );

    // 12 replicas 2 h apart: the last would start at 22 h (fine), 3 h apart at 33 h.
    let staggered =
        |every: &str| replace_line(ISSUE_SCHEMA, "stagger =", &format!("stagger = \"{every}\""));
    Scenario::parse(&staggered("2h"), Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
    let text = staggered("3h");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "`vm[0] (web).stagger`",
    );
    assert!(err.contains("replica 11 would start at 33h"), "{err}");
}

#[test]
fn operator_headroom_above_memory() {
    let text = replace_line(
        ISSUE_SCHEMA,
        "class =",
        "class = \"stateless\"\nheadroom = \"7GiB\"",
    );
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "`vm[0] (web).headroom`",
    );
    assert!(err.contains("above memory"), "{err}");
    // Within the memory it is read, per replica.
    let text = replace_line(
        ISSUE_SCHEMA,
        "class =",
        "class = \"stateless\"\nheadroom = \"1GiB\"",
    );
    let s = Scenario::parse(&text, Path::new(PATH)).expect("valid");
    assert!(s.vms.iter().all(|v| v.headroom == Some(Bytes::gib(1))));
}

#[test]
fn reserve_not_below_host_memory() {
    for reserve in ["64GiB", "65GiB"] {
        let text = replace_line(
            ISSUE_SCHEMA,
            "reserve =",
            &format!("reserve = \"{reserve}\""),
        );
        let err = error_of(&text, Path::new(PATH));
        assert_names(
            &err,
            Path::new(PATH),
            line_of(&text, "[host]"),
            "`host.reserve`",
        );
    }
}

/// The policy runs on whole ticks and sizes its rooms from the interval it is told: an
/// interval below the tick, or not a whole number of ticks, is refused; 10 s is accepted.
#[test]
fn policy_interval_must_be_whole_ticks() {
    for interval in ["0s", "500ms", "1500ms", "2h"] {
        let text = replace_line(
            ISSUE_SCHEMA,
            "seed =",
            &format!("seed = 7\ninterval = \"{interval}\""),
        );
        let err = error_of(&text, Path::new(PATH));
        assert_names(
            &err,
            Path::new(PATH),
            line_of(&text, "[scenario]"),
            "`scenario.interval`",
        );
        // 0 s is not a whole number of ticks to fix, but no interval at all.
        assert_eq!(err.contains("must be positive"), interval == "0s", "{err}");
    }
    let text = replace_line(ISSUE_SCHEMA, "seed =", "seed = 7\ninterval = \"10s\"");
    let s = Scenario::parse(&text, Path::new(PATH)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.interval, Some(Millis::secs(10)));
}

#[test]
fn floors_and_reserve_above_host() {
    // 12 floors of 6 GiB + overheads + 4 GiB reserve > 64 GiB + 1 GiB swap.
    let text = replace_line(ISSUE_SCHEMA, "min =", "min = \"6GiB\"");
    let text = replace_line(&text, "swap = \"32GiB\"", "swap = \"1GiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[host]"),
        "`host.memory`",
    );
    assert!(err.contains("floors"), "{err}");
}

#[test]
fn count_zero() {
    let text = replace_line(ISSUE_SCHEMA, "count =", "count = 0");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "`vm[0] (web).count`",
    );
}

/// A second `[[vm]]` table, appended at the end of `text`.
fn second_vm(name: &str, workload: &str) -> String {
    format!("\n[[vm]]\nname = \"{name}\"\nmemory = \"1GiB\"\n[vm.workload]\n{workload}\n")
}

#[test]
fn duplicate_vm_name_names_file_and_key() {
    // `web` with count 12 expands to web-0..web-11; a VM named web-3 collides.
    let text =
        ISSUE_SCHEMA.to_string() + &second_vm("web-3", "kind = \"idle\"\nworking_set = \"100MiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert!(err.starts_with(&format!("{PATH}:")), "{err}");
    assert!(err.contains(".name`"), "{err}");
    assert!(err.contains("duplicate VM name `web-3`"), "{err}");
}

#[test]
fn duplicate_vm_name_names_its_line() {
    let text =
        ISSUE_SCHEMA.to_string() + &second_vm("web-3", "kind = \"idle\"\nworking_set = \"100MiB\"");
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[[vm]]"))
        .nth(1)
        .map(|(i, _)| i + 1)
        .expect("two [[vm]] tables");
    let err = error_of(&text, Path::new(PATH));
    assert_names(&err, Path::new(PATH), second, "vm[1]");
}

// --- Trace files -------------------------------------------------------------------------

fn trace_scenario(dir: &Path, trace: &str) -> (PathBuf, String) {
    let text = ISSUE_SCHEMA.to_string()
        + &second_vm("replay", &format!("kind = \"trace\"\ntrace = \"{trace}\""));
    let path = dir.join("replay.toml");
    std::fs::write(&path, &text).expect("write scenario");
    (path, text)
}

/// The line of the second `[[vm]]` table in `text`.
fn second_vm_line(text: &str) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[[vm]]"))
        .nth(1)
        .map(|(i, _)| i + 1)
        .expect("two [[vm]] tables")
}

#[test]
fn missing_trace_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, text) = trace_scenario(dir.path(), "nowhere.csv");
    let err = Scenario::load(&path)
        .expect_err("missing trace accepted")
        .to_string();
    assert_names(
        &err,
        &path,
        second_vm_line(&text),
        "`vm[1] (replay).workload.trace`",
    );
    assert!(err.contains("cannot read trace"), "{err}");
    assert!(err.contains("nowhere.csv"), "{err}");
    // Given a relative path, the error also says where it looked.
    let here = tempfile::tempdir_in(".").expect("tempdir here");
    let name = here.path().file_name().expect("a name");
    trace_scenario(here.path(), "nowhere.csv");
    let err = Scenario::load(&Path::new(name).join("replay.toml"))
        .expect_err("missing trace accepted")
        .to_string();
    let looked = std::path::absolute(Path::new(name).join("nowhere.csv")).expect("absolute");
    assert!(err.contains(&format!("({})", looked.display())), "{err}");
    assert!(
        err.contains("`trace = \"nowhere.csv\"`, relative to the scenario's directory"),
        "{err}"
    );
}

#[test]
fn bad_trace_line_is_reported_with_its_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("load.csv");
    // Line 1 header, 2 good, 3 comment, 4 bad.
    std::fs::write(
        &csv,
        "time_s,working_set_mib,page_cache_mib\n0,100,50\n# quiet\n60,lots,50\n",
    )
    .expect("write trace");
    let (path, text) = trace_scenario(dir.path(), "load.csv");
    let err = Scenario::load(&path)
        .expect_err("bad trace accepted")
        .to_string();
    assert_names(
        &err,
        &path,
        second_vm_line(&text),
        "`vm[1] (replay).workload.trace`",
    );
    assert!(
        err.contains(&format!("{}:4:", csv.display())),
        "trace line 4 not named:\n{err}"
    );
    assert!(err.contains("working_set_mib `lots`"), "{err}");

    // Times that go backwards, on line 3.
    std::fs::write(&csv, "0,100\n60,100\n30,100\n").expect("write trace");
    let err = Scenario::load(&path)
        .expect_err("bad trace accepted")
        .to_string();
    assert!(err.contains(&format!("{}:3:", csv.display())), "{err}");
    assert!(err.contains("times must increase"), "{err}");

    // A working set the guest (1 GiB) cannot hold names its line, not its time.
    std::fs::write(&csv, "0,100,50\n60,2000,50\n").expect("write trace");
    let err = Scenario::load(&path)
        .expect_err("too large accepted")
        .to_string();
    assert!(
        err.contains(&format!("{}:2: working set", csv.display())),
        "{err}"
    );

    // Comments before the header (a reviewer's file was refused without a word why).
    std::fs::write(
        &csv,
        "# from build-server, 1 min\n\ntime_s,working_set_mib,page_cache_mib\n0,100,50\n60,200,50\n",
    )
    .expect("write trace");
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));

    // A good trace loads.
    std::fs::write(&csv, "0,100,50\n60,200,50\n").expect("write trace");
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
}

// --- The live-migration escape: `[migration]` and `dirty_rate` ---------------------------

/// The issue's schema with a `[migration]` table (`body`) after `[host]`.
fn with_migration(body: &str) -> String {
    replace_line(
        ISSUE_SCHEMA,
        "swap_bandwidth =",
        &format!("swap_bandwidth = \"500MiB/s\"\n\n[migration]\n{body}"),
    )
}

#[test]
fn migration_table_parses_with_its_defaults() {
    let s = Scenario::parse(ISSUE_SCHEMA, Path::new(PATH)).expect("parses");
    assert!(s.migration.is_none(), "no table, no escape");
    let s = Scenario::parse(&with_migration("escape = true"), Path::new(PATH)).expect("parses");
    let m = s.migration.expect("[migration]");
    assert_eq!(
        m,
        aerostat_sim::scenario::MigrationSpec {
            escape: true,
            ..Default::default()
        }
    );
    assert_eq!(m.grace, Millis::secs(60));
    assert_eq!(m.bandwidth, Bytes::gib(1));
    assert_eq!(m.downtime, Millis(300));
    assert_eq!(m.max_time, Millis::secs(300));
    assert!(m.postcopy);
    assert_eq!(m.thrash_limit, None);
    assert_eq!(m.peers, 1);
    let text = with_migration(
        "escape = true\ngrace = \"2m\"\nbandwidth = \"512MiB/s\"\ndowntime = \"100ms\"\nmax_time = \"90s\"\npostcopy = false\nthrash_limit = \"16MiB/s\"\npeers = 2",
    );
    let text = replace_line(
        &text,
        "page_cache =",
        "page_cache = \"1GiB\"\ndirty_rate = \"64MiB/s\"",
    );
    let s = Scenario::parse(&text, Path::new(PATH)).expect("parses");
    let m = s.migration.expect("[migration]");
    assert_eq!(m.grace, Millis::secs(120));
    assert_eq!(m.bandwidth, Bytes::mib(512));
    assert_eq!(m.downtime, Millis(100));
    assert_eq!(m.max_time, Millis::secs(90));
    assert!(!m.postcopy);
    assert_eq!(m.thrash_limit, Some(Bytes::mib(16)));
    assert_eq!(m.peers, 2);
    assert!(
        s.vms
            .iter()
            .all(|v| v.workload.dirty_rate == Some(Bytes::mib(64)))
    );
}

#[test]
fn unknown_migration_key_names_file_line_and_key() {
    let text = with_migration("escape = true\ngrase = \"60s\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "grase"),
        "migration.grase",
    );
    assert!(err.contains("unknown field `grase`"), "{err}");
}

#[test]
fn bad_migration_units_name_file_line_and_key() {
    for (line, key) in [
        ("bandwidth = \"1GB/s\"", "migration.bandwidth"),
        ("bandwidth = \"1GiB\"", "migration.bandwidth"),
        ("grace = \"60\"", "migration.grace"),
        ("downtime = \"300\"", "migration.downtime"),
        ("thrash_limit = \"16MiB\"", "migration.thrash_limit"),
        ("peers = \"one\"", "migration.peers"),
        ("escape = \"yes\"", "migration.escape"),
    ] {
        let text = with_migration(line);
        let err = error_of(&text, Path::new(PATH));
        assert_names(&err, Path::new(PATH), line_of(&text, line), key);
    }
    let text = replace_line(
        ISSUE_SCHEMA,
        "page_cache =",
        "page_cache = \"1GiB\"\ndirty_rate = \"64MiB\"",
    );
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "dirty_rate"),
        "vm[0] (web).workload.dirty_rate",
    );
    assert!(err.contains("not a rate"), "{err}");
}

#[test]
fn invalid_migration_values_name_the_table() {
    for (body, key, what) in [
        (
            "bandwidth = \"0MiB/s\"",
            "`migration.bandwidth`",
            "positive",
        ),
        ("downtime = \"0s\"", "`migration.downtime`", "positive"),
        ("max_time = \"0s\"", "`migration.max_time`", "positive"),
        (
            "max_time = \"100ms\"",
            "`migration.max_time`",
            "below the downtime",
        ),
        (
            "thrash_limit = \"0B/s\"",
            "`migration.thrash_limit`",
            "positive",
        ),
        ("peers = 0", "`migration.peers`", "at least 1"),
    ] {
        let text = with_migration(&format!("escape = true\n{body}"));
        let err = error_of(&text, Path::new(PATH));
        assert_names(&err, Path::new(PATH), line_of(&text, "[migration]"), key);
        assert!(err.contains(what), "{body}: {err}");
    }
}

#[test]
fn min_free_gives_linux_watermarks_or_says_what_it_takes() {
    use aerostat_core::linux::Watermarks;
    let with = |value: &str| {
        replace_line(
            ISSUE_SCHEMA,
            "class =",
            &format!("class = \"stateless\"\nmin_free = {value}"),
        )
    };
    // Left out: a guest that keeps no free memory of its own.
    let s = Scenario::parse(ISSUE_SCHEMA, Path::new(PATH)).expect("valid");
    assert!(s.vms.iter().all(|v| v.watermarks.is_none()));
    let s = Scenario::parse(&with("\"linux\""), Path::new(PATH)).expect("valid");
    assert_eq!(
        s.vms[0].watermarks,
        Some(Watermarks::typical(Bytes::gib(6)))
    );
    let s = Scenario::parse(&with("\"8MiB\""), Path::new(PATH)).expect("valid");
    assert_eq!(
        s.vms[0].watermarks,
        Some(Watermarks::of(Bytes::gib(6), Bytes::mib(8)))
    );
    let text = with("\"lots\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "min_free"),
        "`vm[0] (web).min_free`",
    );
    assert!(err.contains("\"linux\""), "{err}");
    // Watermarks that leave the guest nothing are refused.
    let text = with("\"5GiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(&err, Path::new(PATH), line_of(&text, "[[vm]]"), "min_free");
    assert!(err.contains("must be below memory"), "{err}");
}

/// `virtio_mem = { boot, block }`: memory above `boot` is a virtio-mem device. Bad values
/// name the key: boot memory outside (kernel, memory), a block that is not a power of two,
/// a device that is not whole blocks, unknown keys.
#[test]
fn virtio_mem_says_what_it_takes() {
    let with = |value: &str| {
        replace_line(
            ISSUE_SCHEMA,
            "class =",
            &format!("class = \"stateless\"\nvirtio_mem = {value}"),
        )
    };
    let s = Scenario::parse(&with(r#"{ boot = "2GiB" }"#), Path::new(PATH)).expect("valid");
    let v = s.vms[0].virtio_mem.expect("a device");
    assert_eq!((v.boot, v.block), (Bytes::gib(2), Bytes::mib(2)));
    assert!(s.vms.iter().all(|v| v.virtio_mem.is_some()));
    for (value, says) in [
        (r#"{ boot = "6GiB" }"#, "below memory"),
        (r#"{ boot = "64MiB" }"#, "above the guest kernel"),
        (r#"{ boot = "2GiB", block = "3MiB" }"#, "power of two"),
        (r#"{ boot = "1000MiB", block = "128MiB" }"#, "whole number"),
        (r#"{ boot = "2GiB", size = "1GiB" }"#, "size"),
        (r#"{ block = "2MiB" }"#, "boot"),
    ] {
        let text = with(value);
        let err = error_of(&text, Path::new(PATH));
        assert!(err.contains("virtio_mem"), "{value}: {err}");
        assert!(err.contains(says), "{value}: {err}");
    }
}

/// Errors of the TOML stage name the right table even after a header with a comment, or a
/// multi-line string holding text that looks like a header (found by a bad-input hunt,
/// session 21: `host.working_set`, and the wrong VM).
#[test]
fn key_paths_see_through_comments_and_multiline_strings() {
    let text = ISSUE_SCHEMA
        .replace("[[vm]]\n", "[[vm]]  # the fleet\n")
        .replace("[vm.workload]", "[vm.workload] # what it runs")
        .replace("working_set = \"1.5GiB\"", "working_set = \"1.5GB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "working_set"),
        "`vm[0] (web).workload.working_set`",
    );
    let text = ISSUE_SCHEMA
        .replace(
            "description = \"12 stateless",
            "description = \"\"\"\n[[vm]]\nname = \"fake\"\n\"\"\" # 12 stateless",
        )
        .replace("working_set = \"1.5GiB\"", "working_set = \"1.5GB\"");
    let err = error_of(&text, Path::new(PATH));
    assert!(err.contains("`vm[0] (web).workload.working_set`"), "{err}");
}

/// Nonsense the parser once let through (a bad-input hunt, session 21).
#[test]
fn a_host_its_own_processes_fill_an_empty_name_and_an_aliased_period_are_refused() {
    let text = replace_line(
        ISSUE_SCHEMA,
        "reserve = \"4GiB\"",
        "reserve = \"4GiB\"\nsystem = \"60GiB\"",
    );
    let text = replace_line(&text, "swap = \"32GiB\"", "swap = \"0\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[host]"),
        "host.system",
    );
    // Blank, or what would break the tables and plots it heads (session 34's fuzzing).
    for bad in [" ", "web|diurnal", "web\\ndiurnal", "web\\u0000"] {
        let text = replace_line(
            ISSUE_SCHEMA,
            "name = \"web-diurnal\"",
            &format!("name = \"{bad}\""),
        );
        let err = error_of(&text, Path::new(PATH));
        assert_names(
            &err,
            Path::new(PATH),
            line_of(&text, "[scenario]"),
            "scenario.name",
        );
    }
    let text = replace_line(ISSUE_SCHEMA, "period = \"24h\"", "period = \"1500ms\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "vm[0] (web).workload.period",
    );
    assert!(err.contains("two simulator ticks"), "{err}");
}

/// A trace that is not a regular file (a device would be read without end) is refused.
#[test]
fn a_trace_that_is_a_device_is_refused() {
    let text = ISSUE_SCHEMA
        .replace(
            "kind = \"diurnal\"",
            "kind = \"trace\"\ntrace = \"/dev/zero\"",
        )
        .replace("peak = \"4GiB\"             # for diurnal/burst/ramp\n", "")
        .replace("period = \"24h\"            # for diurnal\n", "")
        .replace(
            "working_set = \"1.5GiB\"    # baseline anonymous working set\n",
            "",
        )
        .replace("page_cache = \"1GiB\"\n", "");
    let err = error_of(&text, Path::new(PATH));
    assert!(err.contains("not a regular file"), "{err}");
    assert!(err.contains("workload.trace"), "{err}");
}

/// A key given twice is named where it is given the second time, inside an inline table
/// too (the bad-input hunt of session 21 got `vm[0] (a).workload.workload`), and a kind that
/// is not a string says which kinds there are.
#[test]
fn a_duplicate_key_and_a_kind_of_the_wrong_type_are_named() {
    let text = "[scenario]\nname = \"dup\"\nduration = \"1h\"\n[host]\nmemory = \"16GiB\"\n\
                reserve = \"1GiB\"\n[[vm]]\nname = \"a\"\nmemory = \"4GiB\"\nworkload = { kind = \
                \"steady\", working_set = \"1GiB\", working_set = \"2GiB\" }\n";
    let err = error_of(text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(text, "workload ="),
        "`vm[0] (a).workload.working_set`: duplicate key",
    );
    let text = text.replace(
        "workload = { kind = \"steady\", working_set = \"1GiB\", working_set = \"2GiB\" }",
        "memory = \"2GiB\"\n[vm.workload]\nkind = \"steady\"\nworking_set = \"1GiB\"",
    );
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        10,
        "`vm[0] (a).memory`: duplicate key",
    );
    let text = replace_line(ISSUE_SCHEMA, "kind =", "kind = 5");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "kind ="),
        "`vm[0] (web).workload.kind`",
    );
    assert!(err.contains("wanted one of `steady`, `diurnal`"), "{err}");
}

/// `[[vm.workload]]` where `[vm.workload]` belongs: serde's words ("wanted exactly 1
/// element, more than 1 element") contradicted the one element written (a bad-input hunt,
/// session 27).
#[test]
fn a_list_of_tables_where_one_table_belongs_says_so() {
    let text = ISSUE_SCHEMA.replace("[vm.workload]", "[[vm.workload]]");
    let path = Path::new(PATH);
    let err = error_of(&text, path);
    assert_names(
        &err,
        path,
        line_of(&text, "[[vm.workload]]"),
        "`vm[0] (web).workload`",
    );
    assert!(
        err.contains("one table, not a list: write `[vm.workload]`, not `[[vm.workload]]`"),
        "{err}"
    );
}

/// An array where a table belongs: serde's derive read it field by field, in order, so
/// `host = ["64GiB", "4GiB"]` was a host of 64 GiB with a 4 GiB reserve (session 29).
/// Each place a table goes refuses one, naming the key and line.
#[test]
fn an_array_where_a_table_belongs_is_refused() {
    let path = Path::new(PATH);
    let host = ISSUE_SCHEMA
        .replace("[host]\n", "")
        .replace("memory = \"64GiB\"\n", "")
        .replace(
            "reserve = \"4GiB\"          # kept for the hypervisor, never given to guests\n",
            "",
        )
        .replace("swap = \"32GiB\"\n", "")
        .replace("swap_bandwidth = \"500MiB/s\"\n", "");
    let host = format!("host = [\"64GiB\", \"4GiB\", \"32GiB\", \"500MiB/s\"]\n{host}");
    let err = error_of(&host, path);
    assert_names(&err, path, 1, "`host`: wanted a table, not an array");

    let workload = ISSUE_SCHEMA.replace(
        "[vm.workload]\n",
        "workload = [\"diurnal\", \"1.5GiB\"]\n[unused]\n",
    );
    let err = error_of(&workload, path);
    assert_names(
        &err,
        path,
        line_of(&workload, "workload ="),
        "`vm[0] (web).workload`: wanted a table, not an array",
    );

    let device = replace_line(ISSUE_SCHEMA, "stagger", "virtio_mem = [\"2GiB\", \"2MiB\"]");
    let err = error_of(&device, path);
    assert_names(
        &err,
        path,
        line_of(&device, "virtio_mem"),
        "`vm[0] (web).virtio_mem`: wanted a table, not an array",
    );

    let phases = with_phases(
        "kind = \"phases\"\nphases = [{ at = \"0s\", working_set = \"1GiB\" }, [\"1h\", \"2GiB\"]]",
    );
    let err = error_of(&phases, path);
    assert_names(
        &err,
        path,
        line_of(&phases, "phases ="),
        "`vm[0] (web).workload.phases[1]`: wanted a table, not an array",
    );

    let vm = format!(
        "vm = [[\"web\", 12, \"6GiB\"]]\n{}",
        &ISSUE_SCHEMA[..ISSUE_SCHEMA.find("[[vm]]").unwrap_or(0)]
    );
    let err = error_of(&vm, path);
    assert_names(&err, path, 1, "`vm[0]`: wanted a table, not an array");
}

/// An array inside an inline table is a value, not an element: its key is named; an
/// element written as an array on a line of its own is an element, not a table header
/// (a review of session 29's table change found both named wrong).
#[test]
fn arrays_inside_tables_and_on_their_own_lines_are_named() {
    let path = Path::new(PATH);
    let device = replace_line(
        ISSUE_SCHEMA,
        "stagger",
        "virtio_mem = { boot = [\"1GiB\"], block = \"2MiB\" }",
    );
    let err = error_of(&device, path);
    assert_names(
        &err,
        path,
        line_of(&device, "virtio_mem"),
        "`vm[0] (web).virtio_mem.boot`",
    );

    let inline = with_phases(
        "kind = \"phases\"\nphases = [{ at = \"0s\", working_set = \"1GiB\" }, { at = [\"1h\"] }]",
    );
    let err = error_of(&inline, path);
    assert_names(
        &err,
        path,
        line_of(&inline, "phases ="),
        "`vm[0] (web).workload.phases[1].at`",
    );

    let lines = with_phases(
        "kind = \"phases\"\nphases = [\n  { at = \"0s\", working_set = \"1GiB\" },\n  [\"1h\", \"2GiB\"],\n]",
    );
    let err = error_of(&lines, path);
    assert_names(
        &err,
        path,
        line_of(&lines, "[\"1h\""),
        "`vm[0] (web).workload.phases[1]`: wanted a table, not an array",
    );
}

/// Pinned memory and the guest kernel that leave the workload nothing were accepted
/// (session 34's fuzzing).
#[test]
fn fixed_memory_past_the_guest_is_refused() {
    let text = replace_line(ISSUE_SCHEMA, "stagger =", "pinned = \"5.9GiB\"");
    let err = error_of(&text, Path::new(PATH));
    assert_names(
        &err,
        Path::new(PATH),
        line_of(&text, "[[vm]]"),
        "vm[0] (web).pinned",
    );
    assert!(err.contains("leave nothing"), "{err}");
}
