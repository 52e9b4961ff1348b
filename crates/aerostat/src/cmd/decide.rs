//! `aerostat decide`: replay a policy on recorded observations and print its last decision.
//! This is how a policy is checked against other implementations of the same rules.

use std::process::ExitCode;

use aerostat_core::{Bytes, Controller, Millis, Observation, PolicySettings, priority_problem};
use aerostat_qemu::backend::MAX_GUEST_MEMORY;
use serde::Deserialize;

use crate::cli::DecideArgs;
use crate::cmd::InputError;

pub fn run(args: &DecideArgs) -> anyhow::Result<ExitCode> {
    let path = &args.observation;
    let text = aerostat_sim::input::read_bounded(path, aerostat_sim::input::MAX_JSON_BYTES)
        .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    let (settings, observations) =
        parse(&text).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    if observations.is_empty() {
        return Err(InputError(format!("{}: no observations", path.display())).into());
    }
    check(&settings, &observations).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let mut controller = Controller::new(args.policy.build(&settings));
    let mut last = None;
    for obs in &observations {
        last = Some(controller.tick(obs));
    }
    let decision = last.expect("observations is not empty");
    crate::say!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(ExitCode::SUCCESS)
}

/// Parses the file; errors name the field's path (`observations[3].vms[0].stats.free`),
/// line and column. The shape is chosen up front (array, object with `observations`, one
/// observation) and parsed strictly.
fn parse(text: &str) -> Result<(PolicySettings, Vec<Observation>), String> {
    // A byte-order mark is not JSON, and invisible in serde's "expected value" error.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let value: serde_json::Value = from_json(text)?;
        each_with_arrays_only_as_vms(&value, "")?;
        let obs: Vec<Observation> = from_json(text)?;
        return Ok((PolicySettings::default(), obs));
    }
    let value: serde_json::Value = from_json(text)?;
    if let Some(observations) = value.get("observations") {
        if let Some(settings) = value.get("settings") {
            no_arrays(settings, "settings")?;
        }
        each_with_arrays_only_as_vms(observations, "observations")?;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default)]
            settings: Option<PolicySettings>,
            observations: Vec<Observation>,
        }
        let full: Full = from_json(text)?;
        Ok((full.settings.unwrap_or_default(), full.observations))
    } else {
        arrays_only_as_vms(&value, "")?;
        let obs: Observation = from_json(text)?;
        Ok((PolicySettings::default(), vec![obs]))
    }
}

/// An observation's only list is `vms`. serde takes a JSON array for a struct too, field by
/// field in order (`"host": [17179869184, 0, 0]`), which no producer of this schema writes:
/// a file like that is refused, naming where, rather than read by position.
fn arrays_only_as_vms(observation: &serde_json::Value, at: &str) -> Result<(), String> {
    let Some(fields) = observation.as_object() else {
        return no_arrays(observation, at);
    };
    let dot = if at.is_empty() { "" } else { "." };
    for (key, v) in fields {
        let path = format!("{at}{dot}{key}");
        match (key.as_str(), v.as_array()) {
            ("vms", Some(vms)) => {
                for (i, vm) in vms.iter().enumerate() {
                    no_arrays(vm, &format!("{path}[{i}]"))?;
                }
            }
            _ => no_arrays(v, &path)?,
        }
    }
    Ok(())
}

/// [`arrays_only_as_vms`] for each observation of a list (`at`: the list's path).
fn each_with_arrays_only_as_vms(list: &serde_json::Value, at: &str) -> Result<(), String> {
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    for (k, observation) in list.iter().enumerate() {
        arrays_only_as_vms(observation, &format!("{at}[{k}]"))?;
    }
    Ok(())
}

/// Refuses any JSON array in `v` (see [`arrays_only_as_vms`]).
fn no_arrays(v: &serde_json::Value, at: &str) -> Result<(), String> {
    match v {
        serde_json::Value::Array(_) => Err(format!(
            "`{at}`: a JSON array where an object or a value belongs"
        )),
        serde_json::Value::Object(fields) => fields
            .iter()
            .try_for_each(|(key, v)| no_arrays(v, &format!("{at}.{key}"))),
        _ => Ok(()),
    }
}

/// `serde_json::from_str`, with the path of the field an error is about: in a file of
/// 10,000 VMs on one line (the daemon's debug log), "line 1 column 48213" alone names
/// nothing.
fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("`{path}`: {inner}")
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// What JSON's types cannot say: the values a scenario file or the daemon's config would have
/// refused, named by their path in the file. (A balloon `actual` above `configured` is
/// accepted: QEMU can report it, and the controller clamps it.)
fn check(settings: &PolicySettings, observations: &[Observation]) -> Result<(), String> {
    // The daemon's range (`policy.interval`): outside it the policy's rates and holds mean
    // nothing (at 2^64 − 1 ms the aerostat policy never acted).
    if settings.interval < Millis(100) || settings.interval > Millis::secs(600) {
        return Err(format!(
            "`settings.interval`: {} is outside 100ms – 10m",
            settings.interval
        ));
    }
    if settings.proxmox_ballooning_target > 100 {
        return Err(format!(
            "`settings.proxmox_ballooning_target`: {} is not a percentage (0-100)",
            settings.proxmox_ballooning_target
        ));
    }
    let mut last_time = None;
    for (k, obs) in observations.iter().enumerate() {
        let at = if observations.len() > 1 {
            format!("observations[{k}].")
        } else {
            String::new()
        };
        if last_time.is_some_and(|t| obs.time < t) {
            return Err(format!(
                "`{at}time`: {} is before the previous observation's time",
                obs.time.0
            ));
        }
        last_time = Some(obs.time);
        let host = &obs.host;
        if host.total == Bytes::ZERO {
            return Err(format!("`{at}host.total`: must be positive"));
        }
        for (field, v) in [("free", host.free), ("available", host.available)] {
            if v > host.total {
                return Err(format!(
                    "`{at}host.{field}`: {v} is above `host.total` ({})",
                    host.total
                ));
            }
        }
        if settings.reserve >= host.total {
            return Err(format!(
                "`settings.reserve`: {} is not below `{at}host.total` ({})",
                settings.reserve, host.total
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, vm) in obs.vms.iter().enumerate() {
            let key = |field: &str| format!("`{at}vms[{i}] ({}).{field}`", vm.name);
            if vm.name.is_empty() {
                return Err(format!("`{at}vms[{i}].name`: must not be empty"));
            }
            if !names.insert(vm.name.as_str()) {
                return Err(format!("{}: duplicate VM name", key("name")));
            }
            if let Some(why) = priority_problem(vm.priority) {
                return Err(format!("{}: {why}", key("priority")));
            }
            // As the daemon reads QEMU's `base-memory` (a guest of 0 B was a balloon target
            // of 0 B; of 2^64 − 1, a host short by 615 TiB).
            if vm.configured == Bytes::ZERO || vm.configured > MAX_GUEST_MEMORY {
                return Err(format!(
                    "{}: {} is not between 1 B and {MAX_GUEST_MEMORY}",
                    key("configured"),
                    vm.configured
                ));
            }
            if let Some(b) = vm.blocks {
                if b.boot > vm.configured {
                    return Err(format!("{}: above `configured`", key("blocks.boot")));
                }
                // Σ of the devices' block sizes, each a power of two of at least a page.
                if b.step < Bytes::kib(4) || !b.step.0.is_multiple_of(Bytes::kib(4).0) {
                    return Err(format!(
                        "{}: {} is not a whole number of 4 KiB pages",
                        key("blocks.step"),
                        b.step
                    ));
                }
            }
            if vm.min.is_some_and(|m| m > vm.configured) {
                return Err(format!("{}: above `configured`", key("min")));
            }
            if vm.pinned > vm.configured {
                return Err(format!("{}: above `configured`", key("pinned")));
            }
            if vm.headroom.is_some_and(|h| h > vm.configured) {
                return Err(format!("{}: above `configured`", key("headroom")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(vms: &str) -> String {
        format!(
            r#"{{"time": 0, "host": {{"total": 17179869184, "free": 8589934592, "available": 8589934592}}, "vms": [{vms}]}}"#
        )
    }

    const VM: &str = r#"{"name": "db", "configured": 4294967296, "actual": 4294967296}"#;

    fn refused(text: &str) -> String {
        let (settings, obs) = parse(text).expect("parses");
        check(&settings, &obs).expect_err("accepted")
    }

    #[test]
    fn a_sound_observation_passes() {
        let (settings, obs) = parse(&observation(VM)).expect("parses");
        check(&settings, &obs).expect("accepted");
    }

    #[test]
    fn values_a_config_would_refuse_are_named() {
        let dup = format!("{VM}, {VM}");
        assert!(refused(&observation(&dup)).contains("`vms[1] (db).name`: duplicate"));
        let prio = VM.replace('}', r#", "priority": -1}"#);
        assert!(refused(&observation(&prio)).contains("`vms[0] (db).priority`: -1 is not between"));
        // 0 was written `0e0` (session 27's bad-input hunt).
        let zero = VM.replace('}', r#", "priority": 0.0}"#);
        assert!(refused(&observation(&zero)).contains("`vms[0] (db).priority`: 0 is not between"));
        let huge = VM.replace('}', r#", "priority": 1e300}"#);
        assert!(refused(&observation(&huge)).contains("`vms[0] (db).priority`: 1e300 is not"));
        let min = VM.replace('}', r#", "min": 8589934592}"#);
        assert!(refused(&observation(&min)).contains("`vms[0] (db).min`: above"));
        let back = format!(
            "[{}, {}]",
            observation(VM).replace(r#""time": 0"#, r#""time": 5"#),
            observation(VM)
        );
        assert!(refused(&back).contains("`observations[1].time`: 0 is before"));
        // Found by a bad-input hunt (session 21).
        let pinned = VM.replace('}', r#", "pinned": 8589934592}"#);
        assert!(refused(&observation(&pinned)).contains("`vms[0] (db).pinned`: above"));
        let headroom = VM.replace('}', r#", "headroom": 8589934592}"#);
        assert!(refused(&observation(&headroom)).contains("`vms[0] (db).headroom`: above"));
        let free = observation(VM).replace(r#""free": 8589934592"#, r#""free": 68719476736"#);
        assert!(refused(&free).contains("`host.free`: 64.00 GiB is above `host.total`"));
        let zero = observation(VM).replace(r#""total": 17179869184"#, r#""total": 0"#);
        assert!(refused(&zero).contains("`host.total`: must be positive"));
        // Found by a bad-input hunt (session 27): a guest of 0 B was sent a target of 0 B,
        // and a block step of 3 B made targets of odd bytes.
        let empty = VM.replace(r#""configured": 4294967296"#, r#""configured": 0"#);
        assert!(refused(&observation(&empty)).contains("`vms[0] (db).configured`: 0 B is not"));
        let huge = VM.replace(
            r#""configured": 4294967296"#,
            r#""configured": 18446744073709551615"#,
        );
        assert!(refused(&observation(&huge)).contains("`vms[0] (db).configured`"));
        let boot = VM.replace('}', r#", "blocks": {"boot": 8589934592, "step": 2097152}}"#);
        assert!(refused(&observation(&boot)).contains("`vms[0] (db).blocks.boot`: above"));
        let step = VM.replace('}', r#", "blocks": {"boot": 1073741824, "step": 3}}"#);
        assert!(refused(&observation(&step)).contains("`vms[0] (db).blocks.step`: 3 B is not"));
        // Two NUMA nodes' 2 MiB and 4 MiB devices: a step of 6 MiB is sound.
        let numa = VM.replace('}', r#", "blocks": {"boot": 1073741824, "step": 6291456}}"#);
        let (settings, obs) = parse(&observation(&numa)).expect("parses");
        check(&settings, &obs).expect("accepted");
    }

    /// A wrong type names the field's path, not only a line and column (the daemon's debug
    /// log holds an observation of thousands of VMs on one line).
    #[test]
    fn a_wrong_type_names_its_path() {
        let neg = VM.replace('}', r#", "stats": {"free": -1}}"#);
        let err = parse(&observation(&neg)).expect_err("refused");
        assert!(
            err.starts_with("`vms[0].stats.free`: invalid value"),
            "{err}"
        );
        let list = format!("[{}, {}]", observation(VM), observation(&neg));
        let err = parse(&list).expect_err("refused");
        assert!(err.starts_with("`[1].vms[0].stats.free`"), "{err}");
        let trailing = format!("{} x", observation(VM));
        assert!(parse(&trailing).expect_err("refused").contains("trailing"));
    }

    /// serde reads a JSON array as a struct, field by field; the schema never writes one
    /// (session 28's audit): refused, named by its path, in each of the file's shapes.
    #[test]
    fn an_array_in_place_of_an_object_is_refused() {
        let host = r#""host": {"total": 17179869184, "free": 8589934592, "available": 8589934592}"#;
        let positional = observation(VM).replace(host, r#""host": [17179869184, 0, 0]"#);
        let err = parse(&positional).expect_err("refused");
        assert_eq!(
            err,
            "`host`: a JSON array where an object or a value belongs"
        );
        let stats = VM.replace('}', r#", "stats": [1, 2]}"#);
        let list = format!("[{}, {}]", observation(VM), observation(&stats));
        let err = parse(&list).expect_err("refused");
        assert!(err.starts_with("`[1].vms[0].stats`: a JSON array"), "{err}");
        let full = format!(
            r#"{{"settings": {{"reserve": [1]}}, "observations": [{}]}}"#,
            observation(VM)
        );
        let err = parse(&full).expect_err("refused");
        assert!(err.starts_with("`settings.reserve`: a JSON array"), "{err}");
        let full = format!(r#"{{"observations": [{}]}}"#, observation(&stats));
        let err = parse(&full).expect_err("refused");
        assert!(err.starts_with("`observations[0].vms[0].stats`"), "{err}");
        // What the daemon's debug log writes (every optional part present) has no other list.
        let mut vm = aerostat_core::VmSample::new("db", Bytes::gib(4), Bytes::gib(3));
        vm.blocks = Some(aerostat_core::Blocks {
            boot: Bytes::gib(1),
            step: Bytes::mib(2),
            balloon_trims: false,
        });
        vm.coldness = Some(aerostat_core::Coldness {
            touched: Bytes::gib(2),
            idle: Bytes::gib(1),
            at: Millis::secs(1),
        });
        vm.min = Some(Bytes::gib(1));
        vm.rss = Some(Bytes::gib(3));
        vm.deflate_on_oom = Some(true);
        let logged = serde_json::to_string(&Observation {
            time: Millis::secs(2),
            host: aerostat_core::HostSample {
                total: Bytes::gib(16),
                ..Default::default()
            },
            vms: vec![vm],
        })
        .expect("serializes");
        parse(&logged).expect("the daemon's own observation parses");
        // Every shape still reads its lists.
        parse(&format!(
            r#"{{"observations": [{0}, {0}]}}"#,
            observation(VM)
        ))
        .expect("parses");
        parse(&format!(
            "[{0}, {0}]",
            observation(&format!("{VM}, {}", VM.replace("db", "web")))
        ))
        .expect("parses");
    }
}
