//! The VMs the daemon drives: discovered from the QMP socket glob every tick, one QMP
//! connection each, observed concurrently with per-command timeouts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aerostat_core::resize::{self, Pluggable, Resize};
use aerostat_core::{Action, Blocks, Bytes, Coldness, Millis, VmSample};
use aerostat_qemu::backend::{GuestRamPages, MAX_GUEST_MEMORY, VirtioMemDevice};
use aerostat_qemu::{QemuVm, QmpClient, QmpError, QmpOptions};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

use super::config::{Config, VmSettings};
use super::metrics::Metrics;
use super::{ObservedVm, vm_name};

/// One connected VM.
#[derive(Debug)]
pub struct VmConn {
    pub socket: PathBuf,
    qemu: Arc<QemuVm>,
    /// Boot memory (`-m`, QEMU's `base-memory`): what the balloon works on.
    boot: Bytes,
    /// Boot memory plus what the virtio-mem devices can plug: the most the guest can have.
    configured: Bytes,
    /// Whether the VM has a virtio-balloon device. A VM with virtio-mem devices may have none:
    /// its boot memory is then its floor.
    has_balloon: bool,
    /// Why QEMU would refuse to migrate it (`query-migrate`'s `blocked-reasons`: most VFIO
    /// devices, ivshmem in peer mode, ...), read every tick: while there are any the guest is
    /// unmovable for the escape, unless `vm.NAME.migratable` says otherwise.
    pub(crate) blockers: Vec<String>,
    /// Whether `blockers` was ever read: until QEMU has said, the guest is unmovable too (a
    /// migration it cannot even be asked about would cost the escape a grace period).
    blockers_read: bool,
    /// The declared swap disk was not found (warned once until it is).
    swap_disk_missing: bool,
    /// The virtio-mem devices aerostat resizes (those with an `id=`), found at adoption, with
    /// the sizes of the last sample. A target above boot memory is theirs
    /// (`aerostat_core::resize`).
    devices: Vec<VirtioMemDevice>,
    /// A plan whose balloon inflate waits for the devices to reach the plan's sizes (a
    /// device request that fails drops it: the guest keeps more):
    /// - inflating while they migrate pages out of their blocks froze a real guest's
    ///   statistics for 30 s (the policy then held the guest while a workload grew into an
    ///   OOM kill), so the balloon goes second;
    /// - a trimming balloon (`resize::balloon_trims`) inflating while a block is still to be
    ///   plugged would squeeze a guest the policy is growing (1.9 → 2.1 GiB with 1 GiB blocks
    ///   asks for a block plugged and 800 MiB ballooned): the block comes first.
    ///
    /// A deflate is never held: a shrink that crosses a block downward (2.1 → 1.95 GiB)
    /// deflates first and then unplugs, so the guest has room for what the unplug migrates;
    /// the host backs up to a block more until the unplug is done.
    ///
    /// An unplug the guest cannot finish (blocks pinned by unmovable pages; Linux retries
    /// only every 50 s or more) would hold the inflate for good: once the devices have not
    /// moved for [`DEVICES_STUCK_AFTER`] and each still plugs at least the plan's size, the
    /// inflate goes (the guest keeps its target plus what it could not unplug). A plug that
    /// never lands (no driver) keeps holding: inflating then would take the guest below its
    /// target.
    balloon_after_devices: Option<Resize>,
    /// When a device's size last changed, aerostat last asked one for a new size, or the
    /// sizes could not be read: where a stall starts.
    devices_moved_at: Millis,
    /// The stall last logged (by its start): once per stall, not once per inflate.
    stall_logged: Option<Millis>,
    /// The last balloon target sent, if any: a balloon still inflating toward it is stopped
    /// where it stands when a new plan holds its inflate.
    balloon_sent: Option<Bytes>,
    /// The balloon's `actual` at the last sample (boot memory without a balloon).
    balloon_actual: Bytes,
    /// When aerostat adopted the VM (epoch ms). Statistics the guest reported before the
    /// second after it turned polling on may be the driver's first report, from boot: a real
    /// guest read that way looked 200 MiB emptier than it was (a workload started since) and
    /// was inflated onto it.
    adopted_at: Millis,
    /// Last good sample, reused (as unresponsive) when the VM does not answer.
    last: Option<VmSample>,
    pub last_rule: Option<String>,
    pub last_reason: Option<String>,
    pub last_error: Option<String>,
    pub errors: u64,
    /// When this VM's coldness window began (its accessed bits were cleared), and the
    /// last measurement; only for VMs whose guest swap the operator declared.
    coldness_since: Option<tokio::time::Instant>,
    coldness: Option<Coldness>,
    /// Whether the last statistics held the guest's total and free memory; `None` before
    /// the first. Logged when it changes: out-of-range or garbled values are dropped by
    /// design (untrusted), and without a line the operator would not know why the policy
    /// holds the VM where it is.
    stats_usable: Option<bool>,
    /// The balloon device's `deflate-on-oom`, read once at adoption; `None` when QEMU did
    /// not say (the policy then infers it from the guest's MemTotal).
    deflate_on_oom: Option<bool>,
}

/// How long the virtio-mem devices may stand short of their requested sizes before a held
/// inflate stops waiting for them. A real unplug moves every second or two (session 24:
/// 768 MiB in 4–5 s on a TCG guest); a guest that fails one retries after 50 s at the least.
const DEVICES_STUCK_AFTER: Millis = Millis::secs(30);

/// How long one coldness window lasts: the host's own LRU reads the same accessed bits, so
/// they are cleared this seldom, not every tick (docs/observation.md, "Coldness").
const COLDNESS_WINDOW: Duration = Duration::from_secs(30);

/// Every VM by name.
#[derive(Debug)]
pub struct VmRegistry {
    vms: BTreeMap<String, VmConn>,
    /// Sockets being adopted in the background.
    adopting: BTreeMap<PathBuf, Adopting>,
    /// Sockets that failed to connect: why, and when to try again.
    failed: BTreeMap<PathBuf, Failed>,
    options: QmpOptions,
}

/// A socket being adopted in the background.
#[derive(Debug)]
struct Adopting {
    name: String,
    /// Its QEMU's pid, once the socket is connected (before QEMU greets, if it ever does).
    pid: Arc<OnceLock<u32>>,
    task: JoinHandle<Result<VmConn, QmpError>>,
}

/// A socket whose adoption failed.
#[derive(Debug)]
struct Failed {
    name: String,
    error: String,
    /// The QEMU behind it, when the socket connected: it holds memory all the same.
    pid: Option<u32>,
    retry_at: tokio::time::Instant,
}

/// How long a socket that would not connect is left alone.
const RECONNECT_AFTER: Duration = Duration::from_secs(5);
/// How long a tick waits for the adoptions it started: a QEMU answers the handful of
/// commands in milliseconds, so it is driven from this tick on; one that does not (no
/// greeting: another client holds its socket; a stuck main loop) goes on adopting in the
/// background, up to the command timeout, while the other VMs are driven. (Adopting inside
/// the tick, one socket after another, a silent socket held every VM's control for the
/// command timeout every 5 s: session 34.)
const ADOPTION_WAIT: Duration = Duration::from_millis(500);

impl VmRegistry {
    pub fn new(config: &Config) -> VmRegistry {
        let timeout = Duration::from_millis(config.command_timeout.0);
        VmRegistry {
            vms: BTreeMap::new(),
            adopting: BTreeMap::new(),
            failed: BTreeMap::new(),
            options: QmpOptions {
                handshake_timeout: timeout,
                command_timeout: timeout,
            },
        }
    }

    /// The sockets found whose VM is not adopted: failed (with why) or being adopted, each
    /// with the memory its QEMU holds where the host charges it (`charged`: whether a pid's
    /// memory is the host's, i.e. in the daemon's cgroup when one stands for the host).
    /// A pid that is an adopted VM's too (one QEMU, two QMP sockets) or another unadopted
    /// socket's is counted once.
    pub fn unadopted(&self, charged: impl Fn(u32) -> bool) -> Vec<super::Unadopted> {
        // A retry under way that has connected names the process behind the socket now.
        let retrying = |path: &PathBuf| self.adopting.get(path).and_then(|a| a.pid.get().copied());
        let failed = self.failed.iter().map(|(path, f)| {
            (
                path,
                &f.name,
                Some(f.error.clone()),
                retrying(path).or(f.pid),
            )
        });
        let adopting = self
            .adopting
            .iter()
            .filter(|(path, _)| !self.failed.contains_key(*path))
            .map(|(path, a)| (path, &a.name, None, a.pid.get().copied()));
        let mut counted: Vec<u32> = self.vms.values().filter_map(|c| c.qemu.pid()).collect();
        let mut all: Vec<_> = failed
            .chain(adopting)
            .map(|(path, name, error, pid)| {
                let memory = pid
                    .filter(|&p| !counted.contains(&p) && charged(p))
                    .and_then(|p| {
                        let m = aerostat_qemu::backend::read_process_memory(p).ok()?;
                        counted.push(p);
                        // What it holds in RAM: what the host swapped of it is already out
                        // of swap free, against which the controller weighs this.
                        Some((m.touched - m.swapped.unwrap_or(Bytes::ZERO)).0)
                    });
                super::Unadopted {
                    name: name.clone(),
                    socket: path.display().to_string(),
                    error,
                    pid,
                    memory,
                }
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn get(&self, name: &str) -> Option<&VmConn> {
        self.vms.get(name)
    }

    /// The VM's QMP connection, shared (the escape migrates through it while the loop goes on).
    pub fn qemu(&self, name: &str) -> Option<Arc<QemuVm>> {
        self.vms.get(name).map(|c| c.qemu.clone())
    }

    /// Connects to new sockets, forgets vanished ones.
    /// `now`: epoch milliseconds, when a VM adopted now is adopted.
    pub async fn discover(&mut self, config: &Config, metrics: &Metrics, now_ms: Millis) {
        let paths: Vec<PathBuf> = match glob::glob(&config.qmp_glob) {
            Ok(paths) => paths.filter_map(Result::ok).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "bad qmp_glob");
                return;
            }
        };
        let live: BTreeMap<String, PathBuf> = paths
            .into_iter()
            .filter_map(|p| Some((vm_name(&p)?, p)))
            .collect();
        self.vms.retain(|name, conn| {
            let keep = live.get(name) == Some(&conn.socket) && !conn.qemu.client().is_closed();
            if !keep {
                tracing::info!(vm = %name, "VM gone");
            }
            keep
        });
        let now = tokio::time::Instant::now();
        // Adoptions and failures of sockets that are gone are dropped.
        self.failed
            .retain(|path, f| live.get(&f.name) == Some(path));
        self.adopting.retain(|path, a| {
            let keep = live.get(&a.name) == Some(path);
            if !keep {
                a.task.abort();
            }
            keep
        });
        let mut started = Vec::new();
        for (name, path) in &live {
            if self.vms.contains_key(name)
                || self.adopting.contains_key(path)
                || self.failed.get(path).is_some_and(|f| f.retry_at > now)
            {
                continue;
            }
            // Under a span naming the VM: its QMP connection's warnings (a line that is not
            // QMP, an over-long line) say which VM sent it.
            let span = tracing::info_span!("vm", vm = %name);
            let pid = Arc::new(OnceLock::new());
            let task = tokio::spawn(
                connect(
                    name.clone(),
                    path.clone(),
                    self.options,
                    config.stats_interval_s,
                    now_ms,
                    Arc::clone(&pid),
                )
                .instrument(span),
            );
            self.adopting.insert(
                path.clone(),
                Adopting {
                    name: name.clone(),
                    pid,
                    task,
                },
            );
            started.push(path.clone());
        }
        // The adoptions started now get a moment to land this tick; older ones are only
        // collected when done.
        let deadline = now + ADOPTION_WAIT;
        let mut landed = Vec::new();
        for path in started {
            let Some(a) = self.adopting.get_mut(&path) else {
                continue;
            };
            if let Ok(result) = tokio::time::timeout_at(deadline, &mut a.task).await
                && let Some(a) = self.adopting.remove(&path)
            {
                landed.push((path, a.name, a.pid.get().copied(), result));
            }
        }
        let done: Vec<PathBuf> = self
            .adopting
            .iter()
            .filter(|(_, a)| a.task.is_finished())
            .map(|(path, _)| path.clone())
            .collect();
        for path in done {
            if let Some(a) = self.adopting.remove(&path) {
                let result = a.task.await;
                landed.push((path, a.name, a.pid.get().copied(), result));
            }
        }
        for (path, name, pid, result) in landed {
            let result = result.unwrap_or_else(|e| {
                Err(QmpError::Protocol {
                    detail: format!("adoption task failed: {e}"),
                })
            });
            match result {
                Ok(conn) => {
                    tracing::info!(vm = %name, socket = %path.display(), configured = %conn.configured, "VM adopted");
                    self.failed.remove(&path);
                    self.vms.insert(name, conn);
                }
                Err(e) => {
                    metrics.count_error(&name, "connect");
                    let mut e = e.to_string();
                    if e.contains("`greeting`") {
                        e.push_str(
                            " (QEMU serves one QMP client at a time: is another holding this socket?)",
                        );
                    }
                    tracing::warn!(vm = %name, socket = %path.display(), error = %e, "cannot connect; will retry");
                    let retry_at = tokio::time::Instant::now() + RECONNECT_AFTER;
                    // A retry that could not connect at all learns no pid, though the QEMU
                    // behind the socket may still be there: QEMU's listen backlog is one,
                    // and the connections of earlier attempts fill it until QEMU accepts
                    // them, so a socket another client holds refuses every connect from the
                    // third attempt on (EAGAIN). The pid learned before stands while that
                    // process lives.
                    let pid = pid.or_else(|| {
                        self.failed
                            .get(&path)
                            .and_then(|f| f.pid)
                            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                    });
                    self.failed.insert(
                        path,
                        Failed {
                            name,
                            error: e,
                            pid,
                            retry_at,
                        },
                    );
                }
            }
        }
    }

    /// Samples every VM concurrently. A VM that fails keeps its last sample, marked
    /// without balloon so it counts toward host memory but gets no action this tick.
    /// `now`: the observation's time.
    pub async fn observe(
        &mut self,
        config: &Config,
        metrics: &Metrics,
        now: Millis,
    ) -> Vec<ObservedVm> {
        let mut set = JoinSet::new();
        let started = tokio::time::Instant::now();
        for (name, conn) in &self.vms {
            let qemu = conn.qemu.clone();
            let name = name.clone();
            // Coldness only where the operator declared guest swap: the policy has no use
            // for it elsewhere, and clearing accessed bits is not free.
            let window_over = config.vm(&name).swap.is_some()
                && conn
                    .coldness_since
                    .is_none_or(|t| started.duration_since(t) >= COLDNESS_WINDOW);
            // Coldness is measured on boot memory: that is the `-m`-sized mapping it finds.
            let ram = conn.boot;
            let (has_balloon, boot) = (conn.has_balloon, conn.boot);
            let has_devices = !conn.devices.is_empty();
            let swap_disk = config.vm(&name).swap_disk.clone();
            set.spawn(async move {
                let actual = memory_now(&qemu, has_balloon, boot, has_devices).await;
                let stats = qemu.guest_stats().await;
                let process = qemu.query_process_memory().ok();
                // `None` when QEMU cannot say, or did not answer the first query (no third
                // timeout on a hung QEMU): the last answer stands.
                let blockers = match actual {
                    Ok(_) => qemu.migration_blockers().await.ok(),
                    Err(_) => None,
                };
                // A page-table walk: ~10 ms per GiB of 4 KiB pages each for the clear and
                // the read (docs/observation.md), so off the async workers.
                let pages = if window_over {
                    let q = qemu.clone();
                    match tokio::task::spawn_blocking(move || q.measure_coldness(ram)).await {
                        Ok(result) => Some(result),
                        Err(e) => Some(Err(QmpError::Io(std::io::Error::other(e.to_string())))),
                    }
                } else {
                    None
                };
                // What QEMU read from the declared swap disk and wrote to it: `None` when
                // none is declared or QEMU did not answer, `Some(None)` when no disk has that
                // name.
                let swap_disk_io = match (&swap_disk, &actual) {
                    (Some(disk), Ok(_)) => qemu.query_disk_stats().await.ok().map(|disks| {
                        disks
                            .into_iter()
                            .find(|d| d.is(disk))
                            .map(|d| (d.read, d.written))
                    }),
                    _ => None,
                };
                (
                    name,
                    actual,
                    stats,
                    (process, swap_disk_io),
                    blockers,
                    pages,
                )
            });
        }
        let mut results = BTreeMap::new();
        while let Some(joined) = set.join_next().await {
            if let Ok((name, actual, stats, process, blockers, pages)) = joined {
                if let Some(conn) = self.vms.get_mut(&name) {
                    conn.note_coldness(&name, pages, started, now, metrics);
                    if let Some(b) = blockers {
                        conn.note_blockers(&name, b);
                    }
                }
                results.insert(name, (actual, stats, process));
            }
        }
        let mut out = Vec::new();
        for (name, conn) in self.vms.iter_mut() {
            let settings = config.vm(name);
            let mut responsive = false;
            let sample = match results.remove(name) {
                Some((Ok((balloon, devices)), stats, (process, swap_disk_io))) => {
                    conn.balloon_actual = balloon;
                    let plugged = conn.note_devices(devices, now);
                    let Some(actual) = plugged.map(|p| balloon + p) else {
                        let e = QmpError::Protocol {
                            detail: "a virtio-mem device of this VM is gone".into(),
                        };
                        conn.note_error(name, "query-memory-devices", &e, metrics);
                        out.extend(conn.unresponsive());
                        continue;
                    };
                    responsive = true;
                    // QEMU stamps statistics in whole seconds: those stamped in the second
                    // of the adoption may be older than it (a restarted daemon read a guest
                    // whose balloon had just been deflated behind its back with the MemTotal
                    // from before, and took 451 MiB of the step for kernel memory; session 23).
                    let before_adoption = |s: &aerostat_core::GuestStats| {
                        let adopted_s = conn.adopted_at.0 / 1000 * 1000;
                        s.last_update.is_some_and(|t| t.0 <= adopted_s)
                    };
                    let mut waiting = false;
                    let stats = match stats {
                        // From before aerostat asked: not a reading (the policy waits for one).
                        Ok(s) if before_adoption(&s) => {
                            waiting = true;
                            Default::default()
                        }
                        Ok(s) => s,
                        Err(e) => {
                            conn.note_error(name, "stats", &e, metrics);
                            Default::default()
                        }
                    };
                    let mut s =
                        VmSample::new(name.clone(), conn.configured, actual.min(conn.configured));
                    // Without a balloon, boot memory cannot be given back.
                    let floor = if conn.has_balloon {
                        settings.min
                    } else {
                        settings.min.max(conn.boot)
                    };
                    s.min = Some(floor.min(conn.configured));
                    s.overhead = settings.overhead;
                    s.priority = settings.priority;
                    s.class = settings.class;
                    s.headroom = settings.headroom.map(|h| h.min(conn.configured));
                    s.rss = process.map(|m| m.touched);
                    s.host_swapped = process.and_then(|m| m.swapped);
                    let io = conn.note_swap_disk(name, settings, swap_disk_io);
                    s.swap_disk_read = io.map(|(read, _)| read);
                    s.swap_disk_written = io.and_then(|(_, written)| written);
                    s.guest_swap = settings.swap;
                    // What QEMU says blocks a migration makes the guest unmovable, unless
                    // the operator says otherwise. Devices the escape unplugs first take their
                    // blockers with them; a blocker left after the unplug stops that migration
                    // before it starts.
                    s.migratable = settings.migratable.unwrap_or(
                        !settings.handoff.unplug.is_empty()
                            || (conn.blockers_read && conn.blockers.is_empty()),
                    );
                    s.coldness = conn.coldness;
                    s.deflate_on_oom = conn.deflate_on_oom;
                    s.blocks = (!conn.devices.is_empty()).then(|| conn.blocks());
                    // Neither a balloon nor a device: counted toward the host, never acted on.
                    s.balloon = conn.has_balloon || !conn.devices.is_empty();
                    if !waiting {
                        conn.note_stats_usable(name, &stats);
                    }
                    s.stats = stats;
                    conn.last = Some(s.clone());
                    Some(s)
                }
                Some((Err((what, e)), _, _)) => {
                    conn.devices_moved_at = now;
                    conn.note_error(name, what, &e, metrics);
                    out.extend(conn.unresponsive());
                    continue;
                }
                None => {
                    conn.devices_moved_at = now;
                    conn.last.clone()
                }
            };
            if let Some(sample) = sample {
                out.push(ObservedVm {
                    sample,
                    socket: conn.socket.display().to_string(),
                    responsive,
                });
            }
        }
        out
    }

    /// Carries out memory targets: the balloon below boot memory, the virtio-mem devices
    /// above it (`aerostat_core::resize::split`). A deflate goes before the devices move,
    /// an inflate after them (see `VmConn::balloon_after_devices`). `now`: the daemon's
    /// clock (epoch ms), as for `observe`.
    pub async fn apply(&mut self, actions: &[Action], metrics: &Metrics, now: Millis) {
        for action in actions {
            let Some(target) = action.balloon_target() else {
                continue;
            };
            let Some(conn) = self.vms.get_mut(&action.vm) else {
                continue;
            };
            let plan = conn.split(target);
            conn.balloon_after_devices = None;
            let inflate = conn.has_balloon && plan.balloon < conn.balloon_actual;
            if conn.has_balloon && !inflate {
                conn.send_balloon(&action.vm, plan.balloon, metrics).await;
            }
            let mut device_failed = false;
            for i in 0..conn.devices.len() {
                let (dev, size) = (&conn.devices[i], plan.plugged[i]);
                if dev.requested_size == size {
                    continue;
                }
                let id = dev.id.clone().unwrap_or_default();
                match conn.qemu.set_virtio_mem_requested(&id, size).await {
                    Ok(()) => {
                        conn.devices[i].requested_size = size;
                        conn.devices_moved_at = now;
                    }
                    Err(e) => {
                        conn.note_error(&action.vm, "virtio-mem", &e, metrics);
                        device_failed = true;
                    }
                }
            }
            if !inflate {
                continue;
            }
            // A device that refused its new size will not get there: an inflate that would
            // wait for it is dropped, not held (the guest keeps more; the next target plans
            // again) — and not sent on a stall either.
            let dropped = device_failed && conn.resizing(&plan);
            if !dropped && conn.inflate_may_go(&action.vm, &plan, now) {
                conn.send_balloon(&action.vm, plan.balloon, metrics).await;
                continue;
            }
            // A balloon still inflating toward an older, lower target stops where it
            // stands: the hold is for the devices to move first.
            if conn.balloon_sent.is_some_and(|t| t < conn.balloon_actual) {
                let here = conn.balloon_actual;
                conn.send_balloon(&action.vm, here, metrics).await;
            }
            if !dropped {
                conn.balloon_after_devices = Some(plan);
            }
        }
    }

    /// Sends the balloon inflates that waited for their VM's devices to reach their sizes
    /// (or to stop short above them). `now`: the daemon's clock.
    pub async fn apply_after_devices(&mut self, metrics: &Metrics, now: Millis) {
        for (name, conn) in &mut self.vms {
            let Some(plan) = conn.balloon_after_devices.take() else {
                continue;
            };
            if !conn.inflate_may_go(name, &plan, now) {
                conn.balloon_after_devices = Some(plan);
                continue;
            }
            conn.send_balloon(name, plan.balloon, metrics).await;
        }
    }

    /// VMs adopted less than `grace` ago whose guest has not reported statistics since
    /// aerostat turned polling on.
    pub fn awaiting_first_stats(&self, now: Millis, grace: Millis) -> Vec<&str> {
        self.vms
            .iter()
            .filter(|(_, c)| c.stats_usable.is_none() && now.saturating_sub(c.adopted_at) < grace)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Keeps the last rule and reason per VM for `/status`.
    pub fn remember(&mut self, actions: &[Action]) {
        for a in actions {
            if let Some(conn) = self.vms.get_mut(&a.vm) {
                conn.last_rule = Some(a.rule.as_str().to_string());
                conn.last_reason = Some(a.reason.clone());
            }
        }
    }
}

/// The VM's memory now: the balloon's `actual` (boot memory without a balloon) and, when it
/// has virtio-mem devices, their sizes. Errors name the QMP command that failed.
async fn memory_now(
    qemu: &QemuVm,
    has_balloon: bool,
    boot: Bytes,
    has_devices: bool,
) -> Result<(Bytes, Option<Vec<VirtioMemDevice>>), (&'static str, QmpError)> {
    let balloon = if has_balloon {
        // QEMU's `actual` counts boot memory only (measured: 512 MiB with 512 MiB plugged).
        let actual = qemu.query_balloon().await;
        actual.map_err(|e| ("query-balloon", e))?.min(boot)
    } else {
        boot
    };
    let devices = if has_devices {
        let devices = qemu.query_memory_devices().await;
        Some(devices.map_err(|e| ("query-memory-devices", e))?)
    } else {
        None
    };
    Ok((balloon, devices))
}

/// The virtio-mem devices aerostat can resize: those with an `id=` (QMP names a device by it)
/// and a block size QEMU could have reported (a power of two, at most the device). Others stay
/// as they are, with a warning.
fn resizable_devices(vm: &str, all: Vec<VirtioMemDevice>) -> Vec<VirtioMemDevice> {
    all.into_iter()
        .filter(|d| {
            let ok = d.id.is_some()
                && d.block_size.0.is_power_of_two()
                && d.block_size <= d.max_size
                && d.max_size <= MAX_GUEST_MEMORY;
            if !ok {
                tracing::warn!(vm, memdev = %d.memdev, "virtio-mem device without an id= or with implausible sizes: left as it is");
            }
            ok
        })
        .collect()
}

fn pluggable(d: &VirtioMemDevice) -> Pluggable {
    Pluggable {
        max: d.max_size,
        block: d.block_size,
    }
}

impl VmConn {
    /// The VM's virtio-mem devices together, as the controller sees them.
    fn blocks(&self) -> Blocks {
        let step = self.devices.iter().map(|d| d.block_size).sum();
        Blocks {
            boot: self.boot,
            step,
            balloon_trims: resize::balloon_trims(self.has_balloon, step, self.boot),
        }
    }

    /// How a target is reached on this VM.
    fn split(&self, target: Bytes) -> Resize {
        let devices: Vec<Pluggable> = self.devices.iter().map(pluggable).collect();
        let trim = self.blocks().balloon_trims;
        resize::split(target, self.boot, &devices, trim)
    }

    /// Sets the balloon's target, remembering it.
    async fn send_balloon(&mut self, vm: &str, target: Bytes, metrics: &Metrics) {
        match self.qemu.set_balloon(target).await {
            Ok(()) => self.balloon_sent = Some(target),
            Err(e) => self.note_error(vm, "balloon", &e, metrics),
        }
    }

    /// Whether a device still has to plug or unplug to reach `plan`.
    fn resizing(&self, plan: &Resize) -> bool {
        let devices = self.devices.iter().zip(&plan.plugged);
        devices.into_iter().any(|(d, &p)| d.size != p)
    }

    /// Whether `plan`'s inflate can be sent: every device is at the plan's size, or they
    /// have all stopped at or above it for [`DEVICES_STUCK_AFTER`] (the guest then keeps at
    /// least the plan's total). Logs the second case, once per stall.
    fn inflate_may_go(&mut self, vm: &str, plan: &Resize, now: Millis) -> bool {
        if !self.resizing(plan) {
            return true;
        }
        let still_for = now.saturating_sub(self.devices_moved_at);
        let devices = self.devices.iter().zip(&plan.plugged);
        let above_plan = devices.into_iter().all(|(d, &p)| d.size >= p);
        let go = still_for >= DEVICES_STUCK_AFTER && above_plan;
        if go && self.stall_logged != Some(self.devices_moved_at) {
            self.stall_logged = Some(self.devices_moved_at);
            tracing::warn!(
                vm,
                still_s = still_for.0 / 1000,
                "virtio-mem devices stopped short of their requested sizes: inflating the balloon without waiting for them"
            );
        }
        go
    }

    /// Takes the devices' sizes from a fresh `query-memory-devices` (read at `now`) and
    /// returns what they plug; `None` when one of the adopted devices is missing from it
    /// (the stall clock then restarts, as for any reading that failed).
    fn note_devices(&mut self, fresh: Option<Vec<VirtioMemDevice>>, now: Millis) -> Option<Bytes> {
        let Some(fresh) = fresh else {
            return Some(Bytes::ZERO);
        };
        let mut plugged = Bytes::ZERO;
        let mut moved = false;
        for dev in &mut self.devices {
            let Some(read) = fresh.iter().find(|f| f.id == dev.id) else {
                // Sizes not seen are not sizes that stood still.
                self.devices_moved_at = now;
                return None;
            };
            let size = read.size.min(dev.max_size);
            moved |= size != dev.size;
            dev.size = size;
            dev.requested_size = read.requested_size;
            plugged += dev.size;
        }
        if moved {
            self.devices_moved_at = now;
        }
        Some(plugged)
    }

    /// The devices added up, for `/status`; `None` without any.
    pub fn virtio_mem_status(&self) -> Option<super::VirtioMemStatus> {
        if self.devices.is_empty() {
            return None;
        }
        let sum = |f: fn(&VirtioMemDevice) -> Bytes| {
            self.devices.iter().fold(Bytes::ZERO, |a, d| a + f(d)).0
        };
        Some(super::VirtioMemStatus {
            boot: self.boot.0,
            plugged: sum(|d| d.size),
            requested: sum(|d| d.requested_size),
            max: sum(|d| d.max_size),
        })
    }

    /// The last sample, counted toward the host but given no action this tick.
    fn unresponsive(&self) -> Option<ObservedVm> {
        let mut sample = self.last.clone()?;
        sample.balloon = false;
        Some(ObservedVm {
            sample,
            socket: self.socket.display().to_string(),
            responsive: false,
        })
    }

    /// Takes a coldness measurement (`pages`: `None` when no window ended this tick). The
    /// first read after connecting only starts a window: before any clear, `Referenced:`
    /// counts every access since the pages were mapped. A failed read forgets the last
    /// measurement rather than reuse a stale one.
    fn note_coldness(
        &mut self,
        vm: &str,
        pages: Option<Result<Option<GuestRamPages>, QmpError>>,
        started: tokio::time::Instant,
        now: Millis,
        metrics: &Metrics,
    ) {
        let Some(pages) = pages else {
            return;
        };
        let first = self.coldness_since.is_none();
        self.coldness_since = Some(started);
        self.coldness = match pages {
            Ok(Some(p)) if !first => Some(Coldness {
                touched: p.touched,
                idle: p.idle(),
                at: now,
            }),
            Ok(_) => None,
            Err(e) => {
                self.note_error(vm, "coldness", &e, metrics);
                None
            }
        };
    }

    /// When the daemon adopted this VM (its clock).
    pub(crate) fn adopted_at(&self) -> Millis {
        self.adopted_at
    }

    /// The declared swap disk's reads and writes of this tick (`io`: `None` when QEMU did not
    /// answer, `Some(None)` when it has no disk of that name), warning once while the disk is
    /// missing.
    fn note_swap_disk(
        &mut self,
        vm: &str,
        settings: &VmSettings,
        io: Option<Option<(Bytes, Option<Bytes>)>>,
    ) -> Option<(Bytes, Option<Bytes>)> {
        let disk = settings.swap_disk.as_deref()?;
        match io {
            Some(None) if !self.swap_disk_missing => {
                self.swap_disk_missing = true;
                tracing::warn!(
                    vm,
                    disk,
                    "vm.{vm}.swap_disk: QEMU has no disk of that name (no -drive id=, -blockdev node-name= or device id=): its swap-ins are the guest's word alone"
                );
            }
            Some(Some(_)) => self.swap_disk_missing = false,
            _ => {}
        }
        io.flatten()
    }

    /// Takes QEMU's migration blockers of this tick, logging when they change.
    fn note_blockers(&mut self, vm: &str, blockers: Vec<String>) {
        self.blockers_read = true;
        if blockers == self.blockers {
            return;
        }
        if blockers.is_empty() {
            tracing::info!(vm, "QEMU no longer blocks migrating this guest");
        } else {
            tracing::info!(vm, reasons = ?blockers, "QEMU blocks migrating this guest: the escape will not move it unless vm.{vm}.migratable = true");
        }
        self.blockers = blockers;
    }

    /// Logs when the guest's statistics become unusable (no believable total or free
    /// memory) or usable again.
    fn note_stats_usable(&mut self, name: &str, stats: &aerostat_core::GuestStats) {
        let usable = stats.total.is_some() && stats.free.is_some();
        if self.stats_usable == Some(usable) {
            return;
        }
        self.stats_usable = Some(usable);
        if usable {
            tracing::info!(vm = name, "guest statistics usable");
        } else {
            tracing::warn!(
                vm = name,
                "guest statistics unusable (total or free memory missing or implausible): \
                 the policy holds this VM where it is; the host-side guards still apply"
            );
        }
    }

    fn note_error(&mut self, vm: &str, what: &'static str, e: &QmpError, metrics: &Metrics) {
        self.errors += 1;
        self.last_error = Some(format!("{what}: {e}"));
        metrics.count_error(vm, what);
        // Logs a guest can trigger are rate-limited: the first few, then every 100th.
        if self.errors <= 3 || self.errors.is_multiple_of(100) {
            tracing::warn!(vm, what, error = %e, errors = self.errors, "VM error");
        }
    }
}

/// Adopts the VM behind `path`: connects, turns its statistics on, reads its sizes and
/// devices. Owned arguments: it runs as a task of its own (`VmRegistry::discover`).
async fn connect(
    name: String,
    path: PathBuf,
    options: QmpOptions,
    stats_interval_s: u32,
    adopted_at: Millis,
    pid: Arc<OnceLock<u32>>,
) -> Result<VmConn, QmpError> {
    let name = name.as_str();
    let stream = QmpClient::open(&path, options).await?;
    // Known before the greeting: a QEMU that never greets holds memory all the same.
    if let Some(p) = aerostat_qemu::qmp::peer_pid(&stream) {
        let _ = pid.set(p);
    }
    let qemu = QemuVm::new(QmpClient::handshake(stream, options).await?);
    // aerostat turns guest statistics on itself, whatever the VM was started with.
    if let Err(e) = qemu.enable_stats_polling(stats_interval_s).await {
        tracing::warn!(vm = %name, error = %e, "cannot enable guest statistics");
    }
    let summary = qemu
        .client()
        .execute("query-memory-size-summary", None)
        .await?;
    // A VM is adopted only with a believable size: every floor, step and share of the
    // host is counted from it (a 2^64 − 1 reply had the policy "deflate" a guest by
    // exabytes; 0 adopts a VM nothing can be decided for).
    let boot = match summary.get("base-memory") {
        None => Err("no base-memory".to_string()),
        Some(v) => v
            .as_u64()
            .map(Bytes)
            .ok_or_else(|| format!("base-memory {v} is not a byte count")),
    }
    .map_err(|why| QmpError::Protocol {
        detail: format!("query-memory-size-summary: {why}"),
    })?;
    if boot == Bytes::ZERO || boot > MAX_GUEST_MEMORY {
        return Err(QmpError::Protocol {
            detail: format!(
                "query-memory-size-summary: base-memory {} is outside 1 B ..= {MAX_GUEST_MEMORY}",
                boot.0
            ),
        });
    }
    let devices = resizable_devices(name, qemu.query_memory_devices().await?);
    let configured = devices
        .iter()
        .fold(boot, |a, d| a + pluggable(d).capacity());
    if configured > MAX_GUEST_MEMORY {
        return Err(QmpError::Protocol {
            detail: format!(
                "boot memory and virtio-mem devices add up to {} bytes, over {MAX_GUEST_MEMORY}",
                configured.0
            ),
        });
    }
    let has_balloon = qemu.find_balloon_path().await?.is_some();
    // Whether the balloon's pages stay in the guest's MemTotal: without it, a small
    // guest's `used` would read as its use plus the balloon.
    let deflate_on_oom = match qemu.balloon_deflates_on_oom().await {
        Ok(on) => Some(on),
        Err(QmpError::NoDevice { .. }) => None,
        Err(e) => {
            tracing::warn!(vm = %name, error = %e, "cannot read the balloon's deflate-on-oom; inferring it from MemTotal");
            None
        }
    };
    Ok(VmConn {
        socket: path,
        qemu: Arc::new(qemu),
        boot,
        configured,
        has_balloon,
        blockers: Vec::new(),
        blockers_read: false,
        swap_disk_missing: false,
        devices,
        balloon_after_devices: None,
        devices_moved_at: adopted_at,
        stall_logged: None,
        balloon_sent: None,
        balloon_actual: boot,
        adopted_at,
        last: None,
        last_rule: None,
        last_reason: None,
        last_error: None,
        errors: 0,
        coldness_since: None,
        coldness: None,
        stats_usable: None,
        deflate_on_oom,
    })
}

#[cfg(test)]
mod tests;
