//! The VMs the daemon drives: discovered from the QMP socket glob every tick, one QMP
//! connection each, observed concurrently with per-command timeouts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aerostat_core::{Action, Bytes, Coldness, Millis, VmSample};
use aerostat_qemu::backend::{GuestRamPages, MAX_GUEST_MEMORY};
use aerostat_qemu::{QemuVm, QmpError, QmpOptions};
use tokio::task::JoinSet;

use super::config::Config;
use super::metrics::Metrics;
use super::{ObservedVm, vm_name};

/// One connected VM.
#[derive(Debug)]
pub struct VmConn {
    pub socket: PathBuf,
    qemu: Arc<QemuVm>,
    configured: Bytes,
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

/// How long one coldness window lasts: the host's own LRU reads the same accessed bits, so
/// they are cleared this seldom, not every tick (docs/observation.md, "Coldness").
const COLDNESS_WINDOW: Duration = Duration::from_secs(30);

/// Every VM by name.
#[derive(Debug)]
pub struct VmRegistry {
    vms: BTreeMap<String, VmConn>,
    /// Sockets that failed to connect, and when to try again.
    retry_at: BTreeMap<PathBuf, tokio::time::Instant>,
    options: QmpOptions,
}

/// How long a socket that would not connect is left alone.
const RECONNECT_AFTER: Duration = Duration::from_secs(5);

impl VmRegistry {
    pub fn new(config: &Config) -> VmRegistry {
        let timeout = Duration::from_millis(config.command_timeout.0);
        VmRegistry {
            vms: BTreeMap::new(),
            retry_at: BTreeMap::new(),
            options: QmpOptions {
                handshake_timeout: timeout,
                command_timeout: timeout,
            },
        }
    }

    pub fn get(&self, name: &str) -> Option<&VmConn> {
        self.vms.get(name)
    }

    /// The VM's QMP connection, shared (the escape migrates through it while the loop goes on).
    pub fn qemu(&self, name: &str) -> Option<Arc<QemuVm>> {
        self.vms.get(name).map(|c| c.qemu.clone())
    }

    /// Connects to new sockets, forgets vanished ones.
    pub async fn discover(&mut self, config: &Config, metrics: &Metrics) {
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
        for (name, path) in live {
            if self.vms.contains_key(&name) || self.retry_at.get(&path).is_some_and(|t| *t > now) {
                continue;
            }
            match self.connect(&name, &path, config).await {
                Ok(conn) => {
                    tracing::info!(vm = %name, socket = %path.display(), configured = %conn.configured, "VM adopted");
                    self.retry_at.remove(&path);
                    self.vms.insert(name, conn);
                }
                Err(e) => {
                    metrics.count_error(&name, "connect");
                    tracing::warn!(vm = %name, socket = %path.display(), error = %e, "cannot connect; will retry");
                    self.retry_at.insert(path, now + RECONNECT_AFTER);
                }
            }
        }
    }

    async fn connect(
        &self,
        name: &str,
        path: &PathBuf,
        config: &Config,
    ) -> Result<VmConn, QmpError> {
        let qemu = QemuVm::connect_with(path, self.options).await?;
        // aerostat turns guest statistics on itself, whatever the VM was started with.
        if let Err(e) = qemu.enable_stats_polling(config.stats_interval_s).await {
            tracing::warn!(vm = %name, error = %e, "cannot enable guest statistics");
        }
        let summary = qemu
            .client()
            .execute("query-memory-size-summary", None)
            .await?;
        // A VM is adopted only with a believable size: every floor, step and share of the
        // host is counted from it (a 2^64 − 1 reply had the policy "deflate" a guest by
        // exabytes; 0 adopts a VM nothing can be decided for).
        let configured = summary
            .get("base-memory")
            .and_then(serde_json::Value::as_u64)
            .map(Bytes)
            .ok_or_else(|| QmpError::Protocol {
                detail: "query-memory-size-summary: no base-memory".into(),
            })?;
        if configured == Bytes::ZERO || configured > MAX_GUEST_MEMORY {
            return Err(QmpError::Protocol {
                detail: format!(
                    "query-memory-size-summary: base-memory {} is outside 1 B ..= {MAX_GUEST_MEMORY}",
                    configured.0
                ),
            });
        }
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
            socket: path.clone(),
            qemu: Arc::new(qemu),
            configured,
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
            let ram = conn.configured;
            set.spawn(async move {
                let actual = qemu.query_balloon().await;
                let stats = qemu.guest_stats().await;
                let rss = qemu.query_rss().ok();
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
                (name, actual, stats, rss, pages)
            });
        }
        let mut results = BTreeMap::new();
        while let Some(joined) = set.join_next().await {
            if let Ok((name, actual, stats, rss, pages)) = joined {
                if let Some(conn) = self.vms.get_mut(&name) {
                    conn.note_coldness(&name, pages, started, now, metrics);
                }
                results.insert(name, (actual, stats, rss));
            }
        }
        let mut out = Vec::new();
        for (name, conn) in self.vms.iter_mut() {
            let settings = config.vm(name);
            let mut responsive = false;
            let sample = match results.remove(name) {
                Some((Ok(actual), stats, rss)) => {
                    responsive = true;
                    let stats = match stats {
                        Ok(s) => s,
                        Err(e) => {
                            conn.note_error(name, "stats", &e, metrics);
                            Default::default()
                        }
                    };
                    let mut s =
                        VmSample::new(name.clone(), conn.configured, actual.min(conn.configured));
                    s.min = Some(settings.min.min(conn.configured));
                    s.overhead = settings.overhead;
                    s.priority = settings.priority;
                    s.class = settings.class;
                    s.headroom = settings.headroom.map(|h| h.min(conn.configured));
                    s.rss = rss;
                    s.guest_swap = settings.swap;
                    s.coldness = conn.coldness;
                    s.deflate_on_oom = conn.deflate_on_oom;
                    conn.note_stats_usable(name, &stats);
                    s.stats = stats;
                    conn.last = Some(s.clone());
                    Some(s)
                }
                Some((Err(e), _, _)) => {
                    conn.note_error(name, "query-balloon", &e, metrics);
                    conn.last.clone().map(|mut s| {
                        s.balloon = false;
                        s
                    })
                }
                None => conn.last.clone(),
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

    /// Sends balloon targets.
    pub async fn apply(&mut self, actions: &[Action], _config: &Config, metrics: &Metrics) {
        for action in actions {
            let Some(target) = action.balloon_target() else {
                continue;
            };
            let Some(conn) = self.vms.get_mut(&action.vm) else {
                continue;
            };
            if let Err(e) = conn.qemu.set_balloon(target).await {
                conn.note_error(&action.vm, "balloon", &e, metrics);
            }
        }
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

impl VmConn {
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
