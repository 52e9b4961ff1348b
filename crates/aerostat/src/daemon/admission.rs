//! `GET /admit`: may one more guest start on this host? The question comes as query
//! parameters, the answer from the last tick's observation, the policy's targets and the
//! capacity (`aerostat_core::planner::admission`).

use std::collections::BTreeMap;

use aerostat_core::planner::admission::{Admission, NewGuest, admit};
use aerostat_core::{Bytes, Observation};
use aerostat_qemu::backend::MAX_GUEST_MEMORY;
use serde::Serialize;

use super::config::Config;

/// What the last tick saw, kept for `/admit`.
#[derive(Debug, Clone)]
pub struct AdmissionInputs {
    pub obs: Observation,
    /// The policy's target for each of `obs.vms`, in order.
    pub targets: Vec<Option<Bytes>>,
    pub capacity: Bytes,
    /// When the tick took them: an answer from an old observation is no answer.
    pub taken: std::time::Instant,
}

impl AdmissionInputs {
    /// Whether they are too old to answer from: three intervals and a margin without a tick
    /// (a loop stuck on a hung QEMU, or failing).
    pub fn stale(&self, interval: aerostat_core::Millis) -> Option<std::time::Duration> {
        let age = self.taken.elapsed();
        let limit = std::time::Duration::from_millis(interval.0.saturating_mul(3) + 5000);
        (age > limit).then_some(age)
    }
}

/// The answer with the question as understood.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub guest: NewGuest,
    #[serde(flatten)]
    pub admission: Admission,
    /// The verdict in one line.
    pub reason: String,
    /// Guests admitted by name before and not running yet, counted in the answer.
    pub pending: usize,
}

/// The query parameters `/admit` takes.
const PARAMS: [&str; 6] = ["memory", "name", "min", "overhead", "need", "resizable"];

/// Reads the question: `memory` (required), `name` (whose `[vm.NAME]` settings give the
/// defaults; else `[vm_defaults]`), `min`, `overhead`, `need`, `resizable` (`true`/`false`,
/// default true). The error names the parameter.
pub fn parse_request(
    query: &BTreeMap<String, String>,
    config: &Config,
) -> Result<NewGuest, String> {
    if let Some(k) = query.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(format!(
            "unknown parameter `{k}` (use {})",
            PARAMS.join(", ")
        ));
    }
    let bytes = |key: &str| -> Result<Option<Bytes>, String> {
        query
            .get(key)
            .map(|v| v.parse::<Bytes>().map_err(|e| format!("`{key}`: {e}")))
            .transpose()
    };
    let memory =
        bytes("memory")?.ok_or("`memory` is missing (the new guest's memory, e.g. 8GiB)")?;
    if memory < Bytes::mib(1) {
        return Err(format!(
            "`memory`: {memory} is less than 1 MiB (a unit is needed: 8GiB, not 8)"
        ));
    }
    if memory > MAX_GUEST_MEMORY {
        return Err(format!(
            "`memory`: {memory} is more than any guest can have ({MAX_GUEST_MEMORY})"
        ));
    }
    for key in ["min", "need"] {
        if let Some(v) = bytes(key)?
            && v > memory
        {
            return Err(format!("`{key}`: {v} is above `memory` {memory}"));
        }
    }
    if let Some(name) = query.get("name")
        && (name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control))
    {
        return Err(format!(
            "`name`: a VM name is 1 to {MAX_NAME_BYTES} bytes without control characters"
        ));
    }
    let settings = match query.get("name") {
        Some(n) => config.vm(n),
        None => &config.defaults,
    };
    let resizable = match query.get("resizable").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => return Err(format!("`resizable`: `{v}` is not true or false")),
    };
    Ok(NewGuest {
        memory,
        floor: bytes("min")?.unwrap_or(settings.min).min(memory),
        overhead: bytes("overhead")?.unwrap_or(settings.overhead),
        resizable,
        need: bytes("need")?,
    })
}

/// How long a guest admitted by name keeps its room while it is not seen running: long
/// enough for QEMU to start and the daemon to adopt it (a tick or two), short enough that a
/// start that failed does not hold the room for long.
pub const PENDING_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// The most guests admitted by name and not running yet: each is held for PENDING_FOR, and
/// without a bound any caller could grow the daemon's memory (3,000 distinct names: 8 →
/// 75 MB, session 34). A placer past it is told to retry (429), not admitted blind.
pub const MAX_PENDING: usize = 256;

/// The longest VM name `/admit` takes (a socket file name's limit).
const MAX_NAME_BYTES: usize = 255;

/// Guests admitted by name (`name=`, as a libvirt hook asks) that the daemon has not seen
/// running yet: each answer counts them, so two placers asking at once do not both get the
/// same room. A question without a name is a question only, and reserves nothing.
#[derive(Debug, Default)]
pub struct Pending {
    admitted: Vec<(std::time::Instant, String, NewGuest)>,
}

impl Pending {
    /// Whether `name` is held already (asking again replaces it: no new entry).
    pub fn holds(&self, name: &str) -> bool {
        self.admitted.iter().any(|(_, n, _)| n == name)
    }

    /// Whether another guest may be held (after the ones running or expired are pruned).
    pub fn full(&mut self, obs: &Observation) -> bool {
        self.prune(obs);
        self.admitted.len() >= MAX_PENDING
    }

    /// Forgets the ones running now (a VM of that name is in the observation) and the ones
    /// admitted longer ago than [`PENDING_FOR`].
    fn prune(&mut self, obs: &Observation) {
        self.admitted.retain(|(at, name, _)| {
            at.elapsed() < PENDING_FOR && !obs.vms.iter().any(|v| &v.name == name)
        });
    }
}

/// The answer to `guest` from the last tick's inputs; an admitted guest with a `name` is
/// remembered in `pending` until it runs (a name asked about again replaces its entry).
pub fn answer(
    inputs: &AdmissionInputs,
    guest: NewGuest,
    name: Option<&str>,
    pending: &mut Pending,
    max_ratio: Option<f64>,
) -> Answer {
    pending.prune(&inputs.obs);
    if let Some(n) = name {
        pending.admitted.retain(|(_, p, _)| p != n);
    }
    let others: Vec<NewGuest> = pending.admitted.iter().map(|(_, _, g)| g.clone()).collect();
    let admission = admit(
        &inputs.obs,
        &inputs.targets,
        inputs.capacity,
        &guest,
        &others,
        max_ratio,
    );
    if admission.admit
        && let Some(n) = name
    {
        pending
            .admitted
            .push((std::time::Instant::now(), n.to_string(), guest.clone()));
    }
    Answer {
        guest,
        reason: admission.to_string(),
        pending: others.len(),
        admission,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config() -> Config {
        Config::parse(
            "[host]\nreserve = \"1GiB\"\n[qemu]\nqmp_glob = \"/x/*.qmp\"\n\
             [vm_defaults]\nmin = \"512MiB\"\n[vm.db]\nmin = \"2GiB\"\noverhead = \"256MiB\"\n\
             [admission]\nmax_ratio = 1.5\n",
            Path::new("a.toml"),
        )
        .expect("config")
    }

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_question_takes_its_defaults_from_the_config() {
        let c = config();
        assert_eq!(c.max_ratio, Some(1.5));
        let g = parse_request(&q(&[("memory", "8GiB")]), &c).expect("valid");
        assert_eq!((g.floor, g.overhead), (Bytes::mib(512), Bytes::mib(128)));
        assert!(g.resizable && g.need.is_none());
        let g = parse_request(&q(&[("memory", "8GiB"), ("name", "db")]), &c).expect("valid");
        assert_eq!((g.floor, g.overhead), (Bytes::gib(2), Bytes::mib(256)));
        let g = parse_request(
            &q(&[
                ("memory", "1GiB"),
                ("name", "db"),
                ("need", "700MiB"),
                ("resizable", "false"),
            ]),
            &c,
        )
        .expect("valid");
        assert_eq!(
            g.floor,
            Bytes::gib(1),
            "db's configured 2 GiB floor is capped at the memory"
        );
        assert_eq!(g.need, Some(Bytes::mib(700)));
        assert!(!g.resizable);
    }

    /// An empty 4 GiB host (1 GiB reserve): room for two 1.5 GiB needs, not three.
    fn inputs(vms: &[&str]) -> AdmissionInputs {
        AdmissionInputs {
            obs: Observation {
                time: aerostat_core::Millis(0),
                host: aerostat_core::HostSample::default(),
                vms: vms
                    .iter()
                    .map(|n| aerostat_core::VmSample::new(*n, Bytes::mib(128), Bytes::mib(128)))
                    .collect(),
            },
            targets: vms.iter().map(|_| None).collect(),
            capacity: Bytes::gib(3) + Bytes::mib(vms.len() as u64 * 128),
            taken: std::time::Instant::now(),
        }
    }

    /// Guests admitted by name hold their room until they run; a question without a name
    /// reserves nothing; asking again for a name replaces its entry.
    #[test]
    fn admitted_guests_hold_their_room_until_they_run() {
        let c = config();
        let g = parse_request(&q(&[("memory", "2GiB"), ("need", "1408MiB")]), &c).expect("g");
        let mut pending = Pending::default();
        let none = inputs(&[]);
        for _ in 0..3 {
            let a = answer(&none, g.clone(), None, &mut pending, None);
            assert!(a.admission.admit && a.pending == 0, "{}", a.reason);
        }
        assert!(
            answer(&none, g.clone(), Some("x"), &mut pending, None)
                .admission
                .admit
        );
        assert!(
            answer(&none, g.clone(), Some("x"), &mut pending, None)
                .admission
                .admit,
            "x again"
        );
        assert!(
            answer(&none, g.clone(), Some("y"), &mut pending, None)
                .admission
                .admit
        );
        let a = answer(&none, g.clone(), Some("z"), &mut pending, None);
        assert!(!a.admission.admit && a.pending == 2, "{}", a.reason);
        // Once x runs it is counted as a running guest (here 128 MiB), not as pending.
        let a = answer(&inputs(&["x"]), g.clone(), None, &mut pending, None);
        assert_eq!(a.pending, 1, "{}", a.reason);
        assert!(a.admission.admit, "{}", a.reason);
    }

    /// At most MAX_PENDING guests are held by name; asking again for one held is not new.
    #[test]
    fn the_guests_held_by_name_are_bounded() {
        let c = config();
        let g = parse_request(&q(&[("memory", "1MiB"), ("need", "1MiB")]), &c).expect("g");
        let mut pending = Pending::default();
        let mut none = inputs(&[]);
        none.capacity = Bytes::gib(1024);
        for i in 0..MAX_PENDING {
            let name = format!("vm{i}");
            assert!(!pending.full(&none.obs), "{i}");
            let a = answer(&none, g.clone(), Some(&name), &mut pending, None);
            assert!(a.admission.admit, "{i}: {}", a.reason);
        }
        assert!(pending.full(&none.obs));
        assert!(pending.holds("vm0") && !pending.holds("vm-new"));
    }

    #[test]
    fn a_bad_question_names_its_parameter() {
        let c = config();
        for (pairs, says) in [
            (&[][..], "`memory` is missing"),
            (&[("memory", "8")][..], "`memory`"),
            (&[("memory", "0GiB")][..], "less than 1 MiB"),
            (&[("memory", "8GiB"), ("min", "lots")][..], "`min`"),
            (
                &[("memory", "8GiB"), ("resizable", "yes")][..],
                "`resizable`",
            ),
            (
                &[("memory", "8GiB"), ("cpus", "4")][..],
                "unknown parameter `cpus`",
            ),
            // Asked outright, a floor or need above the memory is a contradiction, not a
            // cap; sizes past any guest and names no socket can have are refused.
            (&[("memory", "1GiB"), ("min", "2GiB")][..], "`min`"),
            (&[("memory", "1GiB"), ("need", "2GiB")][..], "`need`"),
            (&[("memory", "8388607TiB")][..], "more than any guest"),
            (&[("memory", "1GiB"), ("name", "")][..], "`name`"),
            (&[("memory", "1GiB"), ("name", "a\nb")][..], "`name`"),
        ] {
            let e = parse_request(&q(pairs), &c).expect_err("refused");
            assert!(e.contains(says), "{pairs:?}: {e}");
        }
    }
}
