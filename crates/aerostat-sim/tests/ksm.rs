//! KSM run by oVirt MoM's rule (`host.ksm_control = "mom"`): the simulated host runs the
//! daemon's rule and merges toward `host.ksm` at the pace it sets, instead of having
//! merged it all from the start.

use std::path::Path;

use aerostat_core::{Bytes, PolicyKind};
use aerostat_sim::{RunOptions, Scenario, Simulation};

/// Four 4 GiB guests using ~2.3 GiB each on a host of `host_gib`, under `static` (no
/// balloon moves, so the guests' memory is the same under both controls).
fn sim(host_gib: u64, control: &str) -> Simulation {
    let text = format!(
        r#"
[scenario]
name = "ksm"
duration = "2h"
seed = 1
[host]
memory = "{host_gib}GiB"
reserve = "1GiB"
ksm = 0.3
ksm_control = "{control}"
[[vm]]
name = "vm"
count = 4
memory = "4GiB"
[vm.workload]
kind = "steady"
working_set = "2GiB"
page_cache = "256MiB"
"#
    );
    let scenario = Scenario::parse(&text, Path::new("ksm.toml")).expect("valid scenario");
    Simulation::new(scenario, RunOptions::new(PolicyKind::Static))
}

/// 16 GiB promised on a 16 GiB host: MoM's rule runs ksmd, at its slowest once free memory
/// is above 20 % (64 pages every 10 ms: 25 MiB/s). The merged memory climbs as a first-order
/// approach to what KSM can merge (`ksm` × the guests' memory), one full pass of the guests'
/// ~9.2 GiB (~6 min) bringing it about 63 % of the way.
#[test]
fn mom_merges_at_the_pace_its_rule_sets() {
    let mut mom = sim(16, "mom");
    let mut always = sim(16, "always");
    let rate = 64.0 * 4096.0 / 0.010;
    let mut checked = 0;
    for minute in 1..=60u64 {
        mom.advance(60);
        always.advance(60);
        let potential = always.ksm_saved().as_f64();
        let merged = mom.ksm_saved().as_f64();
        assert!(potential > 2.5 * Bytes::GIB as f64, "{potential}");
        assert!(
            merged <= potential * 1.0001,
            "minute {minute}: {merged} > {potential}"
        );
        assert_eq!(mom.ksmd(), Some((true, 64)), "minute {minute}");
        // The guests' memory, and so one pass, from what KSM can merge (30 % of it).
        let pass_s = potential / 0.3 / rate;
        let expected = 1.0 - (-(minute as f64 * 60.0) / pass_s).exp();
        let got = merged / potential;
        assert!(
            (got - expected).abs() < 0.05,
            "minute {minute}: merged {got:.3} of what KSM can merge, a first-order approach gives {expected:.3}"
        );
        checked += 1;
    }
    assert_eq!(checked, 60);
    assert!(mom.ksm_saved().as_f64() > 0.99 * always.ksm_saved().as_f64());
}

/// The same guests on a 64 GiB host could never use it up, and it has far more than 20 %
/// free: MoM's rule keeps ksmd stopped, and nothing is merged.
#[test]
fn mom_leaves_ksm_stopped_on_a_host_its_guests_cannot_fill() {
    let mut mom = sim(64, "mom");
    mom.advance(7200);
    assert_eq!(mom.ksmd(), Some((false, 100)));
    assert_eq!(mom.ksm_saved(), Bytes::ZERO);
    let mut always = sim(64, "always");
    always.advance(7200);
    assert!(always.ksm_saved() > Bytes::gib(2));
    assert_eq!(always.ksmd(), None);
}
