//! Whose swap-ins each guest's memory goes through (`aerostat_core::swapping`), from one
//! tick's readings to the next: which readings may start a rate, and which may end one.

use aerostat_core::swapping::{Swapping, diagnose};
use aerostat_core::{Millis, Observation};

use super::ObservedVm;

/// The verdict of every VM that answered this tick and has a reading from the last one, by
/// name. `adopted_at` says when the daemon adopted a VM (`None`: gone): a reading taken
/// before that is another QEMU process's under the same name, with its own counters, and is
/// dropped from `previous` (which [`next_previous`] replaces after this tick anyway).
pub fn verdicts(
    previous: Option<&mut Observation>,
    obs: &Observation,
    samples: &[ObservedVm],
    adopted_at: impl Fn(&str) -> Option<Millis>,
) -> Vec<(String, Swapping)> {
    let Some(prev) = previous else {
        return Vec::new();
    };
    let then = prev.time;
    prev.vms
        .retain(|v| adopted_at(&v.name).is_some_and(|at| at <= then));
    obs.vms
        .iter()
        .zip(diagnose(prev, obs))
        .filter(|(vm, _)| answered(samples, &vm.name))
        .map(|(vm, v)| (vm.name.clone(), v))
        .collect()
}

/// This tick's observation as the next tick's starting point: only the VMs that answered
/// (a VM that did not shows its last sample again, which is no reading of now).
pub fn next_previous(mut obs: Observation, samples: &[ObservedVm]) -> Observation {
    obs.vms.retain(|vm| answered(samples, &vm.name));
    obs
}

fn answered(samples: &[ObservedVm], name: &str) -> bool {
    samples
        .iter()
        .any(|s| s.responsive && s.sample.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aerostat_core::swapping::SwapSource;
    use aerostat_core::{Bytes, HostSample, VmSample};

    /// A tick's reading at `secs`: the machine has swapped in `machine_mib`, and each VM
    /// `(name, VmSwap MiB, answered)`.
    fn tick(
        secs: u64,
        machine_mib: u64,
        vms: &[(&str, u64, bool)],
    ) -> (Observation, Vec<ObservedVm>) {
        let samples: Vec<ObservedVm> = vms
            .iter()
            .map(|&(name, swapped, responsive)| {
                let mut s = VmSample::new(name, Bytes::gib(1), Bytes::gib(1));
                s.host_swapped = Some(Bytes::mib(swapped));
                ObservedVm {
                    sample: s,
                    socket: format!("/run/{name}.qmp"),
                    responsive,
                }
            })
            .collect();
        let obs = Observation {
            time: Millis::secs(secs),
            host: HostSample {
                swap_in: Bytes::mib(machine_mib),
                ..HostSample::default()
            },
            vms: samples.iter().map(|s| s.sample.clone()).collect(),
        };
        (obs, samples)
    }

    #[test]
    fn only_fresh_readings_of_the_same_process_make_a_rate() {
        let adopted = |name: &str| match name {
            "restarted" => Some(Millis::secs(11)),
            _ => Some(Millis::ZERO),
        };
        // 10 s: three VMs answer, one with 2 GiB in host swap.
        let (obs, samples) = tick(
            10,
            0,
            &[
                ("a", 300, true),
                ("hung", 300, true),
                ("restarted", 2048, true),
            ],
        );
        assert!(
            verdicts(None, &obs, &samples, adopted).is_empty(),
            "no rates at the first tick"
        );
        let mut previous = next_previous(obs, &samples);
        // 12 s: `a` swapped 6 MiB back in; `hung` did not answer (its last sample again);
        // `restarted` is a new QEMU, adopted at 11 s, whose VmSwap starts at 0.
        let (obs, samples) = tick(
            12,
            6,
            &[
                ("a", 294, true),
                ("hung", 300, false),
                ("restarted", 0, true),
            ],
        );
        let v = verdicts(Some(&mut previous), &obs, &samples, adopted);
        let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a", "restarted"],
            "no verdict for a VM that did not answer"
        );
        assert_eq!(v[0].1.source, SwapSource::Host, "{:?}", v[0].1);
        assert_eq!(v[0].1.host_swap_in_bps, Some(3 << 20));
        assert_eq!(
            v[1].1.host_swap_in_bps, None,
            "the old process's 2 GiB falling to the new one's 0 is no swap-in"
        );
        // The next tick starts only from readings taken at 12 s.
        let next = next_previous(obs, &samples);
        let kept: Vec<&str> = next.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(kept, ["a", "restarted"]);
    }
}
