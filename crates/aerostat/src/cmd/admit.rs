//! `aerostat admit`: asks the running daemon's `GET /admit` whether one more guest may start
//! on its host, and says so by exit code — for a libvirt `prepare` hook (docs/admission.md)
//! or an orchestrator's placement filter.

use std::process::ExitCode;

use serde_json::Value;

use crate::cli::AdmitArgs;
use crate::cmd::InputError;

/// Exit code when the daemon could not be asked: a hook decides whether that refuses.
const NO_ANSWER: u8 = 3;

pub fn run(args: &AdmitArgs) -> anyhow::Result<ExitCode> {
    // Sizes are checked here too, so that a typo is exit 2 even with no daemon to ask, in
    // the daemon's words.
    let size = |flag: &str, v: &str| {
        v.parse::<aerostat_core::Bytes>()
            .map_err(|e| InputError(format!("--{flag} `{v}`: {e}")))
    };
    let parsed = |flag: &str, v: &Option<String>| v.as_deref().map(|v| size(flag, v)).transpose();
    let memory = size("memory", &args.memory)?;
    let (min, _, need) = (
        parsed("min", &args.min)?,
        parsed("overhead", &args.overhead)?,
        parsed("need", &args.need)?,
    );
    if memory < aerostat_core::Bytes::mib(1) {
        return Err(InputError(format!(
            "`memory`: {memory} is less than 1 MiB (a unit is needed: 8GiB, not 8)"
        ))
        .into());
    }
    for (flag, value) in [("min", min), ("need", need)] {
        if let Some(v) = value
            && v > memory
        {
            return Err(InputError(format!("`{flag}`: {v} is above `memory` {memory}")).into());
        }
    }
    let url = format!("http://{}/admit", args.api);
    let mut req = ureq::get(&url).query("memory", &args.memory);
    for (key, value) in [
        ("name", &args.name),
        ("min", &args.min),
        ("overhead", &args.overhead),
        ("need", &args.need),
    ] {
        if let Some(v) = value {
            req = req.query(key, v);
        }
    }
    if args.not_resizable {
        req = req.query("resizable", "false");
    }
    // The daemon's 400 carries the reason: read the body whatever the status.
    // A hook must not hang a guest's start on a daemon that accepts and never answers.
    let reply = req
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .call();
    let (code, body) = match reply {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => {
            eprintln!(
                "error: asking the daemon at {url} (is `aerostat run` running with api.listen?): {e}"
            );
            return Ok(ExitCode::from(NO_ANSWER));
        }
    };
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let error = answer["error"].as_str().unwrap_or(body.trim());
    match code {
        200 => {}
        400 => return Err(InputError(error.to_string()).into()),
        _ => {
            eprintln!("error: {url} answered {code}: {error}");
            return Ok(ExitCode::from(NO_ANSWER));
        }
    }
    // A 200 without a yes or no is no answer, not a refusal: the hook decides what that means.
    let Some(admit) = answer["admit"].as_bool() else {
        eprintln!(
            "error: {url} answered without `admit` true or false: {}",
            body.trim()
        );
        return Ok(ExitCode::from(NO_ANSWER));
    };
    if args.json {
        crate::say!("{body}");
    } else {
        crate::say!("{}", answer["reason"].as_str().unwrap_or("?"));
    }
    Ok(if admit {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
