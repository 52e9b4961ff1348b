//! The QMP wire format: one JSON object per line, and the bounded line reader.
//!
//! Everything here treats the peer as hostile. QEMU is trusted software, but the socket path
//! comes from configuration and anything could be listening on it; a parser that panics or
//! grows without bound on bad input would take the whole daemon down with one VM.

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest line we accept from the peer. QEMU's largest ordinary replies (`query-pci`,
/// `query-qmp-schema` at ~200 KiB) fit comfortably; a longer line is discarded whole (up to its
/// newline) instead of growing a buffer without bound.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The `{"QMP": {...}}` banner QEMU sends when a client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpGreeting {
    pub version: QemuVersion,
    /// Distribution package string, e.g. `"Debian 1:10.0.2+ds-2..."`; may be empty.
    pub package: String,
    /// Capabilities QEMU offers (`"oob"`); we enable none of them.
    pub capabilities: Vec<String>,
}

/// QEMU's version triple.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// When QEMU emitted an event (host wall clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTimestamp {
    pub seconds: u64,
    pub microseconds: u32,
}

/// An asynchronous QMP event (`BALLOON_CHANGE`, `SHUTDOWN`, `STOP`, `RESUME`, `MIGRATION`...).
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    /// The event's `data` object; `Value::Null` when the event has none.
    pub data: Value,
    /// `None` when QEMU's timestamp was missing or malformed (QEMU reports -1 when its clock
    /// failed).
    pub timestamp: Option<EventTimestamp>,
}

/// One parsed line from the peer.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Greeting(QmpGreeting),
    /// A successful reply; `id` is whatever the command carried (we send integers).
    Return {
        id: Option<Value>,
        value: Value,
    },
    /// A failed command.
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event(QmpEvent),
}

/// A line that is not a QMP message. `id` is set when the line still carried one, so the
/// command waiting for it can be failed at once instead of timing out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub id: Option<Value>,
    pub detail: String,
}

impl Malformed {
    fn new(id: Option<&Value>, detail: impl Into<String>) -> Malformed {
        Malformed {
            id: id.cloned(),
            detail: detail.into(),
        }
    }
}

/// Parses one line (without or with its trailing newline). Never panics; serde_json bounds
/// nesting depth (128), so deeply nested input is an error, not a stack overflow.
pub fn parse_message(line: &[u8]) -> Result<Message, Malformed> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| Malformed::new(None, format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(Malformed::new(None, "not a JSON object"));
    };
    let id = obj.get("id");
    if let Some(v) = obj.get("return") {
        return Ok(Message::Return {
            id: id.cloned(),
            value: v.clone(),
        });
    }
    if let Some(err) = obj.get("error") {
        let class = err.get("class").and_then(Value::as_str);
        let desc = err.get("desc").and_then(Value::as_str);
        return match (class, desc) {
            (Some(class), desc) => Ok(Message::Error {
                id: id.cloned(),
                class: truncate(class, 200),
                desc: truncate(desc.unwrap_or(""), 4096),
            }),
            _ => Err(Malformed::new(id, "error reply without a string `class`")),
        };
    }
    if let Some(name) = obj.get("event") {
        let Some(name) = name.as_str() else {
            return Err(Malformed::new(id, "`event` is not a string"));
        };
        return Ok(Message::Event(QmpEvent {
            name: truncate(name, 200),
            data: obj.get("data").cloned().unwrap_or(Value::Null),
            timestamp: obj.get("timestamp").and_then(parse_timestamp),
        }));
    }
    if let Some(qmp) = obj.get("QMP") {
        return parse_greeting(qmp).map(Message::Greeting);
    }
    Err(Malformed::new(
        id,
        "object has none of `return`, `error`, `event`, `QMP`",
    ))
}

fn parse_timestamp(v: &Value) -> Option<EventTimestamp> {
    let seconds = v.get("seconds")?.as_u64()?;
    let microseconds = u32::try_from(v.get("microseconds")?.as_u64()?).ok()?;
    Some(EventTimestamp {
        seconds,
        microseconds,
    })
}

fn parse_greeting(qmp: &Value) -> Result<QmpGreeting, Malformed> {
    let Some(obj) = qmp.as_object() else {
        return Err(Malformed::new(None, "`QMP` greeting is not an object"));
    };
    let version = obj.get("version");
    let qemu = version.and_then(|v| v.get("qemu"));
    let part = |name: &str| -> Result<u32, Malformed> {
        qemu.and_then(|q| q.get(name))
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Malformed::new(None, format!("greeting lacks version.qemu.{name}")))
    };
    let version_triple = QemuVersion {
        major: part("major")?,
        minor: part("minor")?,
        micro: part("micro")?,
    };
    let package = version
        .and_then(|v| v.get("package"))
        .and_then(Value::as_str)
        .map(|s| truncate(s, 200))
        .unwrap_or_default();
    let capabilities = obj
        .get("capabilities")
        .and_then(Value::as_array)
        .map(|caps| {
            caps.iter()
                .filter_map(Value::as_str)
                .take(64)
                .map(|s| truncate(s, 100))
                .collect()
        })
        .unwrap_or_default();
    Ok(QmpGreeting {
        version: version_triple,
        package,
        capabilities,
    })
}

/// Cuts a peer-supplied string so that logs and errors stay small; never splits a character.
fn truncate(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Serializes a command line. `id` lets us match replies even after a timeout.
pub fn encode_command(command: &str, arguments: Option<&Value>, id: u64) -> Vec<u8> {
    let mut obj = Map::new();
    obj.insert("execute".into(), Value::String(command.to_string()));
    if let Some(args) = arguments {
        obj.insert("arguments".into(), args.clone());
    }
    obj.insert("id".into(), Value::from(id));
    let mut line = Value::Object(obj).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// What the line reader produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// One complete line, without its newline.
    Complete(Vec<u8>),
    /// A line longer than the bound; its bytes were discarded up to the newline.
    TooLong { bytes: usize },
}

/// Reads newline-terminated lines, holding at most `max` bytes of any one line in memory.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader { inner, max }
    }

    /// The next line, or `None` at end of stream. A partial last line without its newline is
    /// returned as a line (QMP never sends one; a dying peer might).
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut buf = Vec::new();
        let mut seen = 0usize;
        let mut too_long = false;
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return Ok(match (seen, too_long) {
                    (0, _) => None,
                    (bytes, true) => Some(Line::TooLong { bytes }),
                    (_, false) => Some(Line::Complete(buf)),
                });
            }
            let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], i + 1),
                None => (available, available.len()),
            };
            let found_newline = done > chunk.len();
            seen = seen.saturating_add(chunk.len());
            if !too_long {
                if buf.len() + chunk.len() > self.max {
                    too_long = true;
                    buf = Vec::new();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            self.inner.consume(done);
            if found_newline {
                return Ok(Some(if too_long {
                    Line::TooLong { bytes: seen }
                } else {
                    Line::Complete(buf)
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::testing::arb_json;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_qemu10_greeting() {
        let line = br#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;
        let Ok(Message::Greeting(g)) = parse_message(line) else {
            panic!("not a greeting")
        };
        assert_eq!(g.version.to_string(), "10.0.2");
        assert_eq!(g.capabilities, vec!["oob".to_string()]);
        assert!(g.package.starts_with("Debian"));
    }

    #[test]
    fn parses_return_error_event() {
        assert_eq!(
            parse_message(br#"{"return": {"actual": 536870912}, "id": 7}"#),
            Ok(Message::Return {
                id: Some(json!(7)),
                value: json!({"actual": 536870912})
            })
        );
        assert_eq!(
            parse_message(
                br#"{"error": {"class": "CommandNotFound", "desc": "The command nonexistent has not been found"}}"#
            ),
            Ok(Message::Error {
                id: None,
                class: "CommandNotFound".into(),
                desc: "The command nonexistent has not been found".into()
            })
        );
        let ev = parse_message(
            br#"{"timestamp": {"seconds": 1795475546, "microseconds": 338537}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#,
        );
        let Ok(Message::Event(ev)) = ev else {
            panic!("not an event")
        };
        assert_eq!(ev.name, "SHUTDOWN");
        assert_eq!(ev.data["reason"], "host-qmp-quit");
        assert_eq!(ev.timestamp.map(|t| t.seconds), Some(1795475546));
    }

    #[test]
    fn event_with_bad_timestamp_keeps_event() {
        let ev = parse_message(
            br#"{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}}"#,
        );
        assert!(matches!(
            ev,
            Ok(Message::Event(QmpEvent {
                timestamp: None,
                ..
            }))
        ));
    }

    #[test]
    fn malformed_reply_keeps_its_id() {
        let m = parse_message(br#"{"id": 3, "huh": 1}"#);
        assert_eq!(m.map_err(|m| m.id), Err(Some(json!(3))));
        assert!(parse_message(b"[1,2]").is_err());
        assert!(parse_message(b"not json").is_err());
        assert!(parse_message(br#"{"error": {"desc": "no class"}}"#).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut s = "[".repeat(100_000);
        s.push_str(&"]".repeat(100_000));
        assert!(parse_message(s.as_bytes()).is_err());
    }

    #[test]
    fn long_strings_are_truncated() {
        let desc = "é".repeat(10_000);
        let line = json!({"error": {"class": "GenericError", "desc": desc}}).to_string();
        let Ok(Message::Error { desc, .. }) = parse_message(line.as_bytes()) else {
            panic!("not an error")
        };
        assert!(desc.len() <= 4096 + "…".len());
    }

    #[test]
    fn encodes_commands_with_ids() {
        let line = encode_command("balloon", Some(&json!({"value": 1})), 9);
        let v: Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(
            v,
            json!({"execute": "balloon", "arguments": {"value": 1}, "id": 9})
        );
        assert_eq!(line.last(), Some(&b'\n'));
    }

    async fn read_all(input: &[u8], max: usize, chunk: usize) -> Vec<Line> {
        let reader = tokio::io::BufReader::with_capacity(chunk.max(1), input);
        let mut lines = LineReader::new(reader, max);
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().await.expect("in-memory read") {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn line_reader_bounds_and_resyncs() {
        let input = b"short\nthis line is too long\nok\npartial";
        let lines = read_all(input, 8, 3).await;
        assert_eq!(
            lines,
            vec![
                Line::Complete(b"short".to_vec()),
                Line::TooLong { bytes: 21 },
                Line::Complete(b"ok".to_vec()),
                Line::Complete(b"partial".to_vec()),
            ]
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_message(&bytes);
        }

        #[test]
        fn parser_never_panics_on_json(v in arb_json()) {
            let _ = parse_message(v.to_string().as_bytes());
            // The same value wrapped in each QMP envelope.
            for key in ["return", "error", "event", "QMP", "id", "data", "timestamp"] {
                let mut obj = Map::new();
                obj.insert(key.to_string(), v.clone());
                obj.insert("error".to_string(), json!({"class": v.clone(), "desc": v.clone()}));
                let _ = parse_message(Value::Object(obj).to_string().as_bytes());
            }
        }

        #[test]
        fn line_reader_never_exceeds_bound(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..2048),
            max in 1usize..64,
            chunk in 1usize..16,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let lines = rt.block_on(read_all(&bytes, max, chunk));
            let mut total = 0;
            for l in &lines {
                match l {
                    Line::Complete(b) => { prop_assert!(b.len() <= max); total += b.len(); }
                    Line::TooLong { bytes } => { prop_assert!(*bytes > max); total += bytes; }
                }
            }
            let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
            prop_assert_eq!(total + newlines, bytes.len());
        }
    }
}
