//! Helpers shared by the simulator's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use aerostat_sim::{RunResult, Scenario};

const MIB: f64 = 1048576.0;

/// The repository's `scenarios/` directory.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios")
}

/// The scenario at `path`, parsed whole and then cut to `duration` (as `--duration` does:
/// its workloads' times stay those of the file).
pub fn load_shortened(path: &Path, duration: &str) -> Scenario {
    let text = std::fs::read_to_string(path).expect("scenario file");
    let mut s = Scenario::parse(&text, path).unwrap_or_else(|e| panic!("{e}"));
    let d: aerostat_core::Millis = duration.parse().expect("a duration");
    s.duration = s.duration.min(d);
    s
}

/// Every action and every sampled target stays at or above the VM's floor; so does the
/// balloon's `actual` (it moves toward its target from above, never past it).
pub fn assert_floors_kept(scenario: &Scenario, result: &RunResult, what: &str) {
    let floor_of = |name: &str| {
        let v = scenario
            .vms
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{what}: unknown VM {name}"));
        v.floor().unwrap_or_default().max(v.pinned).min(v.memory)
    };
    for (t, a) in &result.actions {
        let to = a.balloon_target().expect("balloon action");
        let floor = floor_of(&a.vm);
        assert!(
            to >= floor,
            "{what}: at {t} {} was sent {to}, below its floor {floor}: {a:?}",
            a.vm
        );
    }
    let names = &result.series.vm_names;
    for (k, row) in result.series.vm_rows.iter().enumerate() {
        let name = &names[k % names.len()];
        if row.actual == 0.0 && row.target == 0.0 {
            continue; // not running
        }
        let floor = floor_of(name).as_f64();
        assert!(
            row.target >= floor && row.actual >= floor - MIB,
            "{what}: sample {} of {name}: target {:.0} MiB / actual {:.0} MiB below floor {:.0} MiB",
            k / names.len(),
            row.target / MIB,
            row.actual / MIB,
            floor / MIB
        );
    }
}
