//! `aerostat run` (the daemon) and `aerostat status` (ask it).

use std::process::ExitCode;

use aerostat_core::swapping::SwapSource;
use anyhow::Context;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use tracing_subscriber::EnvFilter;

use crate::cli::{RunArgs, StatusArgs};
use crate::cmd::InputError;
use crate::daemon::{self, Config, Status};

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config).map_err(|e| InputError(e.to_string()))?;
    // Logs go to stderr; stdout carries only decision lines (one JSON object each).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(daemon::run(config, args.dry_run))?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let url = format!("http://{}/status", args.api);
    let body = ureq::get(&url)
        .config()
        .timeout_global(Some(CLIENT_TIMEOUT))
        .build()
        .call()
        .with_context(|| format!("asking the daemon at {url} (is `aerostat run` running?)"))?
        .body_mut()
        .read_to_string()
        .context("reading /status")?;
    if args.json {
        crate::say!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let (status, unknown) = parse_status(&body).context("parsing /status")?;
    crate::say!("{}", table(&status));
    for alert in unknown {
        crate::say!("ALERT: {alert}");
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `aerostat status` waits for the daemon: a daemon that accepts and never answers
/// is not waited for forever.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `/status`, with the alerts this build does not know kept as their JSON: a newer daemon's
/// new kind of alert is shown, not a reason to show nothing.
fn parse_status(body: &str) -> serde_json::Result<(Status, Vec<String>)> {
    let mut value: serde_json::Value = serde_json::from_str(body)?;
    let alerts = value
        .get_mut("alerts")
        .map(|a| std::mem::replace(a, serde_json::Value::Array(Vec::new())))
        .and_then(|a| match a {
            serde_json::Value::Array(items) => Some(items),
            _ => None,
        })
        .unwrap_or_default();
    let mut status: Status = serde_json::from_value(value)?;
    let mut unknown = Vec::new();
    for alert in alerts {
        match serde_json::from_value::<aerostat_core::Alert>(alert.clone()) {
            Ok(a) => status.alerts.push(a),
            Err(_) => unknown.push(alert.to_string()),
        }
    }
    Ok((status, unknown))
}

fn mib(b: u64) -> Cell {
    Cell::new(format!("{}", b >> 20)).set_alignment(CellAlignment::Right)
}

fn table(s: &Status) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "vm",
        "configured MiB",
        "current MiB",
        "target MiB",
        "floor MiB",
        "idle MiB",
        "virtio-mem MiB",
        "ok",
        "swapping",
        "last rule",
        "last reason",
    ]);
    for v in &s.vms {
        let mut reason = v
            .last_error
            .clone()
            .map(|e| format!("error: {e}"))
            .or(v.last_reason.clone())
            .unwrap_or_default();
        if reason.chars().count() > 90 {
            reason = reason.chars().take(89).collect::<String>() + "…";
        }
        t.add_row(vec![
            Cell::new(&v.name),
            mib(v.configured),
            mib(v.actual),
            v.target.map_or(Cell::new("-"), mib),
            mib(v.floor),
            // Host-measured, for VMs with declared guest swap (docs/observation.md).
            v.coldness.map_or(Cell::new("-"), |c| mib(c.idle.0)),
            // Plugged now / asked for; the rest of `current` is boot memory (the balloon's).
            v.virtio_mem.map_or(Cell::new("-"), |m| {
                Cell::new(format!("{}/{}", m.plugged >> 20, m.requested >> 20))
                    .set_alignment(CellAlignment::Right)
            }),
            Cell::new(match (v.responsive, v.migrating) {
                (_, true) => "migrating",
                (true, false) => "yes",
                (false, false) => "NO",
            }),
            // Whose swap-ins: the guest's own, the host's, or both (double paging).
            Cell::new(match v.swapping.as_ref().map(|s| s.source) {
                None | Some(SwapSource::None) => "-",
                Some(source) => source.as_str(),
            }),
            Cell::new(v.last_rule.as_deref().unwrap_or("-")),
            Cell::new(reason),
        ]);
    }
    let host = s
        .host
        .as_ref()
        .map_or(String::from("host: not read yet"), |h| {
            format!(
                "host: total {} MiB, available {} MiB, capacity for guests {} MiB, room for one more {}",
                h.total.0 >> 20,
                h.available.0 >> 20,
                s.capacity >> 20,
                s.room.map_or("-".into(), |r| format!("{} MiB", r >> 20))
            )
        });
    let mut out = format!(
        "policy {} every {} ms{} — tick {}\n{host}\n{t}",
        s.policy,
        s.interval_ms,
        if s.dry_run { " (dry run)" } else { "" },
        s.ticks
    );
    // Sockets whose VM is not driven, and what their QEMUs hold (the policy counts it as
    // used once host swap cannot hold it: docs/status.md).
    for u in &s.unadopted {
        let held = u.memory.map_or(String::new(), |m| {
            format!(" — its QEMU holds {} MiB", m >> 20)
        });
        out.push_str(&format!(
            "\nNOT ADOPTED: {} ({}): {}{held}",
            u.name,
            u.socket,
            u.error.as_deref().unwrap_or("adopting")
        ));
    }
    // What no balloon can fix, under the table where the eye ends.
    for alert in &s.alerts {
        out.push_str(&format!("\nALERT: {alert}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aerostat_core::{Alert, Bytes};

    /// A newer daemon's alert kind is shown as it came, and the rest of `/status` still is.
    #[test]
    fn an_unknown_alert_kind_does_not_hide_the_status() {
        let body = r#"{"policy":"aerostat","interval_ms":1000,"dry_run":false,"ticks":3,
            "time":0,"host":null,"capacity":0,"vms":[],
            "alerts":[{"kind":"floors_do_not_fit","need":2,"capacity":1},
                      {"kind":"new_kind_from_future","x":1}]}"#;
        let (status, unknown) = parse_status(body).expect("parsed");
        assert_eq!(status.ticks, 3);
        assert_eq!(status.alerts.len(), 1);
        assert_eq!(unknown.len(), 1);
        assert!(unknown[0].contains("new_kind_from_future"), "{unknown:?}");
        assert!(parse_status("[1]").is_err());
    }

    #[test]
    fn the_status_table_ends_with_the_alerts() {
        let mut s = Status {
            policy: "aerostat".into(),
            vms: vec![daemon::VmStatus {
                name: "web".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!table(&s).contains("ALERT"));
        // The swapping column shows whose swap-ins, and nothing for none.
        let header = |t: &str| t.lines().nth(3).unwrap_or_default().to_string();
        let row = |t: &str| t.lines().nth(5).unwrap_or_default().to_string();
        let text = table(&s);
        assert!(header(&text).contains("swapping"), "{text}");
        let cells = |t: &str| -> Vec<String> {
            row(t)
                .split(['│', '┆'])
                .map(|c| c.trim().to_string())
                .collect()
        };
        let col = header(&text)
            .split(['│', '┆'])
            .position(|c| c.trim() == "swapping")
            .expect("a swapping column");
        assert_eq!(cells(&text)[col], "-", "{text}");
        s.vms[0].swapping = Some(aerostat_core::swapping::Swapping {
            source: SwapSource::Both,
            guest_swap_in_bps: Some(2 << 20),
            guest_swap_out_bps: None,
            swap_disk_read_bps: None,
            swap_disk_write_bps: None,
            host_swap_in_bps: Some(2 << 20),
            machine_swap_in_bps: Some(2 << 20),
            host_swapped: Some(300 << 20),
            why: String::new(),
        });
        let text = table(&s);
        assert_eq!(cells(&text)[col], "both", "{text}");
        s.alerts = vec![
            Alert::FloorsDoNotFit {
                need: Bytes::gib(2),
                capacity: Bytes::gib(1),
            },
            Alert::WorkingSetsDoNotFit {
                unmet: Bytes::mib(100),
            },
        ];
        let text = table(&s);
        let last: Vec<&str> = text.lines().rev().take(2).collect();
        assert!(last[1].starts_with("ALERT: floors do not fit"), "{text}");
        assert!(
            last[0].starts_with("ALERT: working sets do not fit") && last[0].contains("100"),
            "{text}"
        );
    }
}
