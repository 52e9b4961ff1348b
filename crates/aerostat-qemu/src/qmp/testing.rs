//! Test helpers: an in-process fake QMP server on a unix socket in a temp dir, and a
//! proptest strategy for arbitrary JSON.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(test)]
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// The greeting QEMU 10.0.2 sent on this project's machines.
pub const QEMU10_GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;

/// What the fake server does next.
#[derive(Debug)]
pub enum Out {
    /// Send one line (a newline is appended).
    Line(String),
    /// Send raw bytes as they are.
    Raw(Vec<u8>),
    /// Wait before the next output.
    Sleep(Duration),
    /// Close the connection.
    Close,
}

pub type Handler = Box<dyn FnMut(&Value) -> Vec<Out> + Send>;

/// `{"return": ret, "id": <cmd's id>}`.
pub fn ok(cmd: &Value, ret: Value) -> Out {
    Out::Line(json!({"return": ret, "id": cmd["id"]}).to_string())
}

/// `{"error": {...}, "id": <cmd's id>}`.
pub fn err(cmd: &Value, class: &str, desc: &str) -> Out {
    Out::Line(json!({"error": {"class": class, "desc": desc}, "id": cmd["id"]}).to_string())
}

pub fn event(name: &str, data: Value) -> Out {
    Out::Line(
        json!({"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 2}})
            .to_string(),
    )
}

#[derive(Debug)]
pub struct FakeQmp {
    pub path: PathBuf,
    /// Every command the client sent, in order.
    pub received: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for FakeQmp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeQmp {
    /// A QEMU-like server: QEMU 10 greeting, answers `qmp_capabilities`, then `handler`.
    pub fn qemu(mut handler: impl FnMut(&Value) -> Vec<Out> + Send + 'static) -> FakeQmp {
        FakeQmp::raw(
            vec![Out::Line(QEMU10_GREETING.into())],
            Box::new(move |cmd| {
                if cmd["execute"] == "qmp_capabilities" {
                    vec![ok(cmd, json!({}))]
                } else {
                    handler(cmd)
                }
            }),
        )
    }

    /// A server that sends `on_connect` and then answers each line with `handler`.
    pub fn raw(on_connect: Vec<Out>, mut handler: Handler) -> FakeQmp {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind fake QMP socket");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (read, mut write) = stream.into_split();
            if !send(&mut write, on_connect).await {
                return;
            }
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let cmd: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                log.lock().expect("log lock").push(cmd.clone());
                if !send(&mut write, handler(&cmd)).await {
                    return;
                }
            }
        });
        FakeQmp {
            path,
            received,
            _dir: dir,
            task,
        }
    }

    /// Names of the commands received so far.
    pub fn commands(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("log lock")
            .iter()
            .map(|c| c["execute"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

/// Returns false when the connection should end.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, outs: Vec<Out>) -> bool {
    for out in outs {
        let r = match out {
            Out::Line(mut l) => {
                l.push('\n');
                write.write_all(l.as_bytes()).await
            }
            Out::Raw(b) => write.write_all(&b).await,
            Out::Sleep(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Out::Close => return false,
        };
        if r.is_err() {
            return false;
        }
    }
    true
}

/// Arbitrary JSON biased toward QMP's keys, so the parser's deeper branches get exercised.
#[cfg(test)]
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from(-1)),
        Just(Value::from(u64::MAX)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(arb_key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[cfg(test)]
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "return",
            "error",
            "class",
            "desc",
            "event",
            "data",
            "timestamp",
            "seconds",
            "microseconds",
            "QMP",
            "version",
            "qemu",
            "major",
            "minor",
            "micro",
            "id",
            "stats",
            "last-update",
            "stat-free-memory",
            "stat-total-memory",
            "stat-oom-kills",
            "actual",
            "status",
            "ram",
            "type",
            "size",
            "requested-size",
        ])
        .prop_map(str::to_string),
        ".{0,8}",
    ]
}
