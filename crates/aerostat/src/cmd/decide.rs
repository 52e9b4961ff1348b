//! `aerostat decide`: replay a policy on recorded observations and print its last decision.
//! This is how a policy is checked against other implementations of the same rules.

use std::process::ExitCode;

use aerostat_core::{Controller, Observation, PolicySettings};
use serde::Deserialize;

use crate::cli::DecideArgs;
use crate::cmd::InputError;

pub fn run(args: &DecideArgs) -> anyhow::Result<ExitCode> {
    let path = &args.observation;
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    let (settings, observations) =
        parse(&text).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    if observations.is_empty() {
        return Err(InputError(format!("{}: no observations", path.display())).into());
    }
    let mut controller = Controller::new(args.policy.build(&settings));
    let mut last = None;
    for obs in &observations {
        last = Some(controller.tick(obs));
    }
    let decision = last.expect("observations is not empty");
    crate::say!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(ExitCode::SUCCESS)
}

/// Parses the file; serde_json errors name the line and column. The shape is chosen
/// up front (array, object with `observations`, one observation) and parsed strictly.
fn parse(text: &str) -> Result<(PolicySettings, Vec<Observation>), String> {
    let trimmed = text.trim_start();
    let err = |e: serde_json::Error| e.to_string();
    if trimmed.starts_with('[') {
        let obs: Vec<Observation> = serde_json::from_str(text).map_err(err)?;
        return Ok((PolicySettings::default(), obs));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(err)?;
    if value.get("observations").is_some() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default)]
            settings: Option<PolicySettings>,
            observations: Vec<Observation>,
        }
        let full: Full = serde_json::from_str(text).map_err(err)?;
        Ok((full.settings.unwrap_or_default(), full.observations))
    } else {
        let obs: Observation = serde_json::from_str(text).map_err(err)?;
        Ok((PolicySettings::default(), vec![obs]))
    }
}
