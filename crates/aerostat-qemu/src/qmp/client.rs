//! The connection: handshake, command execution with ids and deadlines, event collection.
//!
//! One reader task owns the socket's read half. It routes each reply to the command waiting
//! for its id and appends each event to a bounded buffer. One writer task owns the write half
//! and writes whole lines from a queue, so a caller that gives up (timeout, `select!`) can never
//! leave half a command on the wire. Commands may be issued concurrently from several tasks;
//! replies are matched by id, so a reply that arrives after its command timed out is recognised
//! and dropped instead of being taken for the answer to the next command.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::error::QmpError;
use super::wire::{
    LineReader, MAX_LINE_BYTES, Message, QmpEvent, QmpGreeting, encode_command, parse_message,
};

/// Events kept for the caller before the oldest are dropped. QEMU can emit events faster than a
/// slow consumer drains them (a guest toggling its balloon triggers one `BALLOON_CHANGE` per
/// step); a bound keeps memory flat, and [`QmpClient::dropped_events`] says when it bit.
pub const MAX_BUFFERED_EVENTS: usize = 1024;

/// Command lines queued for the writer task. When QEMU stops reading, the queue fills and
/// further commands wait for room until their deadline.
const WRITE_QUEUE: usize = 64;

/// Deadlines for the handshake and for commands that do not name their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QmpOptions {
    /// For connecting, the greeting and `qmp_capabilities`.
    pub handshake_timeout: Duration,
    /// For [`QmpClient::execute`].
    pub command_timeout: Duration,
}

impl Default for QmpOptions {
    fn default() -> Self {
        QmpOptions {
            handshake_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        }
    }
}

type Reply = Result<Value, QmpError>;

#[derive(Debug, Default)]
struct State {
    pending: HashMap<u64, (String, oneshot::Sender<Reply>)>,
    events: VecDeque<QmpEvent>,
    dropped_events: u64,
    malformed_lines: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    event_ready: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind (maps and counters), which
        // stays consistent; keep going rather than poison every later call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Vec<u8>>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    greeting: QmpGreeting,
    peer_pid: Option<u32>,
    options: QmpOptions,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// The pid of the process that listens on `stream`'s other end (`SO_PEERCRED`: whoever
/// called `listen`, i.e. QEMU when QEMU made its own socket); `None` when the kernel cannot
/// say.
pub fn peer_pid(stream: &UnixStream) -> Option<u32> {
    stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
}

impl QmpClient {
    /// Connects to a QMP unix socket, reads the greeting and leaves negotiation mode.
    pub async fn connect(path: impl AsRef<Path>) -> Result<QmpClient, QmpError> {
        Self::connect_with(path, QmpOptions::default()).await
    }

    /// [`QmpClient::connect`] with explicit deadlines.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        options: QmpOptions,
    ) -> Result<QmpClient, QmpError> {
        Self::handshake(Self::open(path, options).await?, options).await
    }

    /// Connects to a QMP unix socket without reading from it. The connection is accepted by
    /// the kernel even while QEMU serves another client (it then waits in the backlog), so
    /// [`peer_pid`] names the QEMU behind a socket that will not greet.
    pub async fn open(path: impl AsRef<Path>, options: QmpOptions) -> Result<UnixStream, QmpError> {
        let path = path.as_ref();
        tokio::time::timeout(options.handshake_timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout {
                command: format!("connect {}", path.display()),
                after: options.handshake_timeout,
            })?
            .map_err(QmpError::Io)
    }

    /// Runs the handshake on an already connected stream (e.g. a socket passed by a supervisor).
    pub async fn handshake(stream: UnixStream, options: QmpOptions) -> Result<QmpClient, QmpError> {
        let peer_pid = peer_pid(&stream);
        let (read, write) = stream.into_split();
        let mut lines = LineReader::new(BufReader::new(read), MAX_LINE_BYTES);

        let greeting = tokio::time::timeout(options.handshake_timeout, read_greeting(&mut lines))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
                after: options.handshake_timeout,
            })??;

        let shared = Arc::new(Shared::default());
        // The connection's tasks log under the caller's span (the daemon's names the VM).
        let reader = tokio::spawn(read_loop(lines, Arc::clone(&shared)).in_current_span());
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(write, queue, Arc::clone(&shared)).in_current_span());
        let client = QmpClient {
            shared,
            writes,
            next_id: AtomicU64::new(1),
            reader,
            writer,
            greeting,
            peer_pid,
            options,
        };
        client
            .execute_with_timeout("qmp_capabilities", None, options.handshake_timeout)
            .await?;
        Ok(client)
    }

    /// The banner QEMU sent on connect.
    pub fn greeting(&self) -> &QmpGreeting {
        &self.greeting
    }

    /// The pid of the process on the other end of the socket (QEMU), from `SO_PEERCRED`.
    /// QMP itself has no command that reports it.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }

    /// The deadlines this client was created with.
    pub fn options(&self) -> QmpOptions {
        self.options
    }

    /// Whether the reader saw the end of the stream. Every later command fails with `Closed`.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Runs a command with the default deadline and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.options.command_timeout)
            .await
    }

    /// Runs a command and decodes its `return` value; a shape mismatch is a `Protocol` error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let value = self.execute(command, arguments).await?;
        serde_json::from_value(value)
            .map_err(|e| QmpError::protocol(format!("unexpected reply to `{command}`: {e}")))
    }

    /// Runs a command with its own deadline.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(QmpError::Closed);
            }
            state.pending.insert(id, (command.to_string(), tx));
        }
        // Removes the pending entry however this function ends (error, timeout, or the
        // caller dropping the future), so the map never leaks.
        let _guard = PendingGuard {
            shared: &self.shared,
            id,
        };

        let line = encode_command(command, arguments.as_ref(), id);
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || QmpError::Timeout {
            command: command.to_string(),
            after: timeout,
        };
        match tokio::time::timeout_at(deadline, self.writes.send(line)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(QmpError::Closed),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(QmpError::Closed),
            Ok(Ok(reply)) => reply,
        }
    }

    /// Takes every buffered event, oldest first.
    pub fn drain_events(&self) -> Vec<QmpEvent> {
        self.shared.lock().events.drain(..).collect()
    }

    /// Waits for the next event. `None` when the connection closed and nothing is buffered.
    pub async fn next_event(&self) -> Option<QmpEvent> {
        loop {
            let notified = self.shared.event_ready.notified();
            {
                let mut state = self.shared.lock();
                if let Some(ev) = state.events.pop_front() {
                    return Some(ev);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Events discarded because the buffer was full.
    pub fn dropped_events(&self) -> u64 {
        self.shared.lock().dropped_events
    }

    /// Lines from the peer that were not QMP (garbage, over-long, unknown ids).
    pub fn malformed_lines(&self) -> u64 {
        self.shared.lock().malformed_lines
    }
}

struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

/// Events QEMU may send ahead of the greeting before the connection is refused.
const EVENTS_BEFORE_GREETING: usize = 16;

/// Reads the greeting. Events before it are skipped: QEMU 10 sent a `BALLOON_CHANGE` meant
/// for the previous client of the socket as the first line of the next connection (a
/// real-VM test, session 24) — its old session's state outlives the close for a moment.
async fn read_greeting(
    lines: &mut LineReader<BufReader<OwnedReadHalf>>,
) -> Result<QmpGreeting, QmpError> {
    for _ in 0..=EVENTS_BEFORE_GREETING {
        match lines.next_line().await? {
            None => return Err(QmpError::Closed),
            Some(super::wire::Line::TooLong { bytes }) => {
                return Err(QmpError::protocol(format!(
                    "greeting line of {bytes} bytes exceeds {MAX_LINE_BYTES}"
                )));
            }
            Some(super::wire::Line::Complete(line)) => match parse_message(&line) {
                Ok(Message::Greeting(g)) => return Ok(g),
                Ok(Message::Event(e)) => {
                    tracing::debug!(event = %e.name, "QMP: an event before the greeting, skipped");
                }
                Ok(other) => {
                    return Err(QmpError::protocol(format!(
                        "expected the QMP greeting, got {}",
                        describe(&other)
                    )));
                }
                Err(m) => return Err(QmpError::protocol(format!("bad greeting: {}", m.detail))),
            },
        }
    }
    Err(QmpError::protocol(format!(
        "more than {EVENTS_BEFORE_GREETING} events before the QMP greeting"
    )))
}

fn describe(m: &Message) -> &'static str {
    match m {
        Message::Greeting(_) => "a greeting",
        Message::Return { .. } => "a reply",
        Message::Error { .. } => "an error",
        Message::Event(_) => "an event",
    }
}

/// Our ids are integers; anything else cannot be ours.
fn our_id(id: &Option<Value>) -> Option<u64> {
    id.as_ref().and_then(Value::as_u64)
}

async fn read_loop(mut lines: LineReader<BufReader<OwnedReadHalf>>, shared: Arc<Shared>) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(super::wire::Line::Complete(line))) => line,
            Ok(Some(super::wire::Line::TooLong { bytes })) => {
                tracing::warn!(bytes, "QMP: discarded an over-long line");
                shared.lock().malformed_lines += 1;
                continue;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "QMP: read failed; closing");
                break;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut state = shared.lock();
        match parse_message(&line) {
            Ok(Message::Return { id, value }) => deliver(&mut state, &id, Ok(value)),
            Ok(Message::Error { id, class, desc }) => {
                let command = our_id(&id)
                    .and_then(|i| state.pending.get(&i))
                    .map(|(c, _)| c.clone())
                    .unwrap_or_default();
                deliver(
                    &mut state,
                    &id,
                    Err(QmpError::Command {
                        command,
                        class,
                        desc,
                    }),
                );
            }
            Ok(Message::Event(ev)) => {
                if state.events.len() >= MAX_BUFFERED_EVENTS {
                    state.events.pop_front();
                    state.dropped_events += 1;
                }
                state.events.push_back(ev);
                drop(state);
                shared.event_ready.notify_waiters();
            }
            Ok(Message::Greeting(_)) => {
                state.malformed_lines += 1;
                tracing::warn!("QMP: unexpected second greeting ignored");
            }
            Err(m) => {
                state.malformed_lines += 1;
                tracing::warn!(detail = %m.detail, "QMP: ignored a line that is not QMP");
                // If the line still named one of our commands, fail that command now.
                if m.id.is_some() {
                    let detail = m.detail;
                    deliver(&mut state, &m.id, Err(QmpError::Protocol { detail }));
                }
            }
        }
    }
    let mut state = shared.lock();
    state.closed = true;
    // Dropping the senders wakes every waiting command with `Closed`.
    state.pending.clear();
    drop(state);
    shared.event_ready.notify_waiters();
}

/// Writes queued lines whole. A write error means the peer is gone: the connection is marked
/// closed and every waiting command fails with `Closed`.
async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(line) = queue.recv().await {
        let result = async {
            write.write_all(&line).await?;
            write.flush().await
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "QMP: write failed; closing");
            let mut state = shared.lock();
            state.closed = true;
            state.pending.clear();
            drop(state);
            shared.event_ready.notify_waiters();
            return;
        }
    }
}

fn deliver(state: &mut State, id: &Option<Value>, reply: Reply) {
    match our_id(id).and_then(|i| state.pending.remove(&i)) {
        Some((_, tx)) => {
            // The command may have been abandoned between our lookup and now; fine.
            let _ = tx.send(reply);
        }
        None => {
            // A late reply to a timed-out command, or a reply we never asked for.
            state.malformed_lines += 1;
            tracing::debug!(?id, "QMP: dropped a reply with no waiting command");
        }
    }
}
