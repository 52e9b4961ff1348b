//! The order in which the daemon moves a VM's balloon and virtio-mem devices, against a fake
//! QEMU: a guest with 512 MiB of boot memory, a balloon, and one virtio-mem device of up to
//! 1 GiB in 128 MiB blocks (so the balloon also trims what rounding up to blocks adds).
//! The real guest's side of the same order is in `tests/real_vm.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aerostat_core::{Action, ActionKind, Bytes, Millis, Rule};
use aerostat_qemu::qmp::testing::{FakeQmp, Out, err, ok};
use serde_json::{Value, json};

use super::VmRegistry;
use crate::daemon::config::Config;
use crate::daemon::metrics::Metrics;

const MIB: u64 = 1 << 20;
const VM: &str = "qmp";

/// What the fake QEMU's guest holds and does.
#[derive(Debug)]
struct Guest {
    /// The balloon's `actual`.
    actual: u64,
    /// Whether the balloon reaches a new target at once (else it stays until a test moves it).
    balloon_follows: bool,
    /// The device's plugged size; it moves only when a test moves it (the guest's driver).
    size: u64,
    requested: u64,
    /// Whether QEMU refuses a new requested size.
    refuses_resize: bool,
    /// Whether `query-memory-devices` fails (a QMP hiccup).
    devices_unreadable: bool,
    /// What `query-migrate` says blocks a migration (`blocked-reasons`); empty: nothing.
    blockers: Vec<&'static str>,
    /// Whether `query-migrate` fails.
    migrate_unreadable: bool,
}

impl Guest {
    fn new(actual_mib: u64, plugged_mib: u64) -> Guest {
        Guest {
            actual: actual_mib * MIB,
            balloon_follows: true,
            size: plugged_mib * MIB,
            requested: plugged_mib * MIB,
            refuses_resize: false,
            devices_unreadable: false,
            blockers: Vec::new(),
            migrate_unreadable: false,
        }
    }
}

/// QEMU 10's replies for this guest, as far as the daemon asks.
fn answer(guest: &mut Guest, cmd: &Value) -> Vec<Out> {
    let args = &cmd["arguments"];
    let reply = match cmd["execute"].as_str().unwrap_or_default() {
        "qom-list" if args["path"] == "/machine/peripheral" => json!([
            {"name": "balloon0", "type": "child<virtio-balloon-pci>"},
            {"name": "vm0", "type": "child<virtio-mem-pci>"},
        ]),
        // QEMU 10 before any migration: `{}`, or the reasons it would refuse one.
        "query-migrate" if guest.migrate_unreadable => {
            return vec![err(cmd, "GenericError", "not now")];
        }
        "query-migrate" if guest.blockers.is_empty() => json!({}),
        "query-migrate" => json!({"blocked-reasons": guest.blockers}),
        "qom-list" => json!([]),
        "qom-set" if args["property"] == "requested-size" => {
            if guest.refuses_resize {
                return vec![err(cmd, "GenericError", "cannot change the size")];
            }
            guest.requested = args["value"].as_u64().unwrap_or_default();
            json!({})
        }
        "qom-set" => json!({}),
        "qom-get" if args["property"] == "deflate-on-oom" => json!(false),
        "qom-get" => json!({
            "stats": {"stat-total-memory": 900 * MIB, "stat-free-memory": 400 * MIB},
            "last-update": 2_000_000_000u64,
        }),
        "query-memory-size-summary" => {
            json!({"base-memory": 512 * MIB, "plugged-memory": guest.size})
        }
        "query-memory-devices" if guest.devices_unreadable => {
            return vec![err(cmd, "GenericError", "try again")];
        }
        "query-memory-devices" => json!([{"type": "virtio-mem", "data": {
            "memdev": "/objects/mem0", "id": "vm0", "node": 0, "memaddr": 1u64 << 32,
            "size": guest.size, "requested-size": guest.requested,
            "max-size": 1024 * MIB, "block-size": 128 * MIB,
        }}]),
        "query-balloon" => json!({"actual": guest.actual}),
        "balloon" => {
            if guest.balloon_follows {
                guest.actual = args["value"].as_u64().unwrap_or_default().min(512 * MIB);
            }
            json!({})
        }
        _ => return vec![err(cmd, "CommandNotFound", "not in this fake")],
    };
    vec![ok(cmd, reply)]
}

/// A daemon's registry that has adopted the fake guest and read it once.
struct Rig {
    fake: FakeQmp,
    guest: Arc<Mutex<Guest>>,
    registry: VmRegistry,
    config: Config,
    metrics: Metrics,
}

impl Rig {
    async fn adopt(guest: Guest) -> Rig {
        Rig::adopt_with(guest, "").await
    }

    /// As `adopt`, with `vm_config` after the daemon config's `[vm.qmp]` header.
    async fn adopt_with(guest: Guest, vm_config: &str) -> Rig {
        let guest = Arc::new(Mutex::new(guest));
        let model = Arc::clone(&guest);
        let fake = FakeQmp::qemu(move |cmd| answer(&mut model.lock().expect("guest"), cmd));
        let text = format!(
            "[host]\nreserve = \"512MiB\"\n[qemu]\nqmp_glob = \"{}\"\n[vm.{VM}]\n{vm_config}\n",
            fake.path.display()
        );
        let config = Config::parse(&text, Path::new("a.toml")).expect("config");
        let metrics = Metrics::new();
        let mut registry = VmRegistry::new(&config);
        registry.discover(&config, &metrics, Millis::secs(1)).await;
        assert!(registry.get(VM).is_some(), "the fake guest is adopted");
        let mut rig = Rig {
            fake,
            guest,
            registry,
            config,
            metrics,
        };
        rig.observe(2).await;
        rig
    }

    /// Reads the guest at `secs` on the daemon's clock.
    async fn observe(&mut self, secs: u64) {
        let vms = self
            .registry
            .observe(&self.config, &self.metrics, Millis::secs(secs))
            .await;
        let unreadable = self.guest.lock().expect("guest").devices_unreadable;
        assert!(
            vms.iter().all(|v| v.responsive != unreadable),
            "the fake guest answers as set"
        );
    }

    /// The controller's action at `secs`: bring the guest to `mib`.
    async fn target(&mut self, mib: u64, secs: u64) {
        let action = Action {
            vm: VM.into(),
            kind: ActionKind::Balloon {
                from: Bytes::ZERO,
                to: Bytes::mib(mib),
            },
            rule: Rule::MomShrink,
            reason: "test".into(),
        };
        let now = Millis::secs(secs);
        self.registry.apply(&[action], &self.metrics, now).await;
    }

    /// The daemon's tick at `secs` sends the inflates that waited.
    async fn after_devices(&mut self, secs: u64) {
        let now = Millis::secs(secs);
        self.registry.apply_after_devices(&self.metrics, now).await;
    }

    /// The balloon targets sent so far, MiB.
    fn balloons(&self) -> Vec<u64> {
        self.sent("balloon")
            .iter()
            .map(|a| a["value"].as_u64().unwrap_or_default() / MIB)
            .collect()
    }

    /// The requested sizes sent to the device so far, MiB.
    fn device_requests(&self) -> Vec<u64> {
        self.sent("qom-set")
            .iter()
            .filter(|a| a["property"] == "requested-size")
            .map(|a| a["value"].as_u64().unwrap_or_default() / MIB)
            .collect()
    }

    fn sent(&self, command: &str) -> Vec<Value> {
        let received = self.fake.received.lock().expect("log");
        let of = received.iter().filter(|c| c["execute"] == command);
        of.map(|c| c["arguments"].clone()).collect()
    }

    /// The guest's driver plugs or unplugs to `mib`.
    fn device_reaches(&self, mib: u64) {
        self.guest.lock().expect("guest").size = mib * MIB;
    }
}

/// 1 GiB (512 boot + 512 plugged) → 400 MiB: the device unplugs first, and only then does
/// the balloon inflate below boot memory.
#[tokio::test]
async fn an_inflate_waits_for_the_unplug() {
    let mut rig = Rig::adopt(Guest::new(512, 512)).await;
    rig.target(400, 10).await;
    assert_eq!(rig.device_requests(), [0]);
    assert_eq!(
        rig.balloons(),
        [] as [u64; 0],
        "held while the device unplugs"
    );

    rig.observe(11).await;
    rig.after_devices(12).await;
    assert_eq!(
        rig.balloons(),
        [] as [u64; 0],
        "the device has not moved yet"
    );

    rig.device_reaches(0);
    rig.observe(13).await;
    rig.after_devices(14).await;
    assert_eq!(
        rig.balloons(),
        [400],
        "sent once the device is at the plan's size"
    );
    rig.after_devices(15).await;
    assert_eq!(rig.balloons(), [400], "and only once");
}

/// 512 MiB (boot only) → 700 MiB: two blocks plug 768 MiB and the balloon trims 68 MiB,
/// but only once the blocks are there; a plug that never lands holds it for good (the
/// inflate would take the guest below its target).
#[tokio::test]
async fn a_trim_waits_for_the_plug_however_long() {
    let mut rig = Rig::adopt(Guest::new(512, 0)).await;
    rig.target(700, 10).await;
    assert_eq!(rig.device_requests(), [256]);
    rig.observe(11).await;
    rig.observe(600).await;
    rig.after_devices(601).await;
    assert_eq!(rig.balloons(), [] as [u64; 0], "no plug, no trim");

    rig.device_reaches(256);
    rig.observe(602).await;
    rig.after_devices(603).await;
    assert_eq!(rig.balloons(), [444]);
}

/// An unplug the guest cannot finish (blocks pinned) stops short above the plan: 30 s after
/// its last move the inflate goes, and the guest keeps its target plus what it could not
/// unplug. The stall counts from the last move, or from the request.
#[tokio::test]
async fn an_unplug_that_stops_short_releases_the_inflate() {
    let mut rig = Rig::adopt(Guest::new(512, 512)).await;
    rig.target(400, 100).await;
    rig.observe(120).await;
    rig.after_devices(120).await;
    assert_eq!(rig.balloons(), [] as [u64; 0], "20 s since the request");
    rig.device_reaches(256);
    rig.observe(125).await;
    rig.observe(140).await;
    rig.after_devices(150).await;
    assert_eq!(
        rig.balloons(),
        [] as [u64; 0],
        "25 s since the device last moved"
    );
    rig.observe(155).await;
    rig.after_devices(155).await;
    assert_eq!(rig.balloons(), [400], "30 s since the device last moved");
}

/// A device that refuses its new size will not get there: the inflate is dropped, not
/// held (the guest keeps more), and a stall does not release it either — nor send it at
/// once where the devices last moved long ago (a review found that).
#[tokio::test]
async fn a_refused_resize_drops_the_inflate() {
    let mut rig = Rig::adopt(Guest::new(512, 512)).await;
    rig.guest.lock().expect("guest").refuses_resize = true;
    rig.observe(99).await;
    rig.target(400, 100).await;
    rig.observe(101).await;
    rig.after_devices(600).await;
    assert_eq!(rig.balloons(), [] as [u64; 0]);
    assert_eq!(rig.registry.get(VM).map(|c| c.errors), Some(1));
}

/// Sizes the daemon could not read are not sizes that stood still: a failed reading
/// restarts the stall clock.
#[tokio::test]
async fn an_unread_device_is_not_a_stalled_one() {
    let mut rig = Rig::adopt(Guest::new(512, 512)).await;
    rig.target(400, 100).await;
    rig.guest.lock().expect("guest").devices_unreadable = true;
    rig.observe(125).await;
    rig.guest.lock().expect("guest").devices_unreadable = false;
    rig.observe(140).await;
    rig.after_devices(140).await;
    assert_eq!(
        rig.balloons(),
        [] as [u64; 0],
        "40 s since the request, 15 s since seen"
    );
    rig.observe(155).await;
    rig.after_devices(155).await;
    assert_eq!(rig.balloons(), [400], "30 s since last unread");
}

/// A balloon still inflating toward an older, lower target stops where it stands while a
/// new plan's inflate waits for the devices.
#[tokio::test]
async fn an_older_inflate_stops_where_it_stands() {
    let mut rig = Rig::adopt(Guest::new(512, 512)).await;
    rig.guest.lock().expect("guest").balloon_follows = false;
    // 900 MiB: the device stays at 512 MiB, the balloon trims to 388 MiB, at once.
    rig.target(900, 10).await;
    assert_eq!(rig.balloons(), [388]);
    rig.guest.lock().expect("guest").actual = 450 * MIB;
    rig.observe(11).await;
    // 400 MiB: the device must unplug first; the balloon, at 450 on its way to 388, stops.
    rig.target(400, 12).await;
    assert_eq!(rig.balloons(), [388, 450]);
    assert_eq!(rig.device_requests(), [0]);
}

/// A deflate never waits, and goes before the unplug: the guest needs the room for what the
/// unplug migrates.
#[tokio::test]
async fn a_deflate_goes_before_the_unplug() {
    let mut rig = Rig::adopt(Guest::new(300, 512)).await;
    rig.target(500, 10).await;
    let order: Vec<String> = rig
        .fake
        .commands()
        .into_iter()
        .filter(|c| c == "balloon" || c == "qom-set")
        .collect();
    // The adoption's qom-set (statistics polling) comes first.
    assert_eq!(order, ["qom-set", "balloon", "qom-set"]);
    assert_eq!(rig.balloons(), [500]);
    assert_eq!(rig.device_requests(), [0]);
}

/// A guest QEMU says it would refuse to migrate is unmovable for the escape unless the operator
/// says otherwise (or has the escape unplug the device first); the operator's word wins either
/// way, and the blockers are read every tick.
#[tokio::test]
async fn a_migration_blocker_makes_a_guest_unmovable_unless_the_config_says_otherwise() {
    const VFIO: &str = "VFIO device doesn't support migration";
    for (blocked, config, movable) in [
        (false, "", true),
        (true, "", false),
        (true, "migratable = true", true),
        (false, "migratable = false", false),
        // The escape unplugs the device first: its blocker goes with it.
        (true, "unplug_for_migration = [\"vf0\"]", true),
        (
            true,
            "unplug_for_migration = [\"vf0\"]\nmigratable = false",
            false,
        ),
    ] {
        let mut guest = Guest::new(512, 512);
        if blocked {
            guest.blockers = vec![VFIO];
        }
        let mut rig = Rig::adopt_with(guest, config).await;
        let vms = rig
            .registry
            .observe(&rig.config, &rig.metrics, Millis::secs(3))
            .await;
        assert_eq!(vms.len(), 1);
        assert_eq!(
            vms[0].sample.migratable, movable,
            "blocked {blocked}, config {config:?}"
        );
        let conn = rig.registry.get(VM).expect("adopted");
        assert_eq!(conn.blockers.is_empty(), !blocked);
    }
    // Blockers never read are not "none": unmovable until QEMU has said.
    let mut guest = Guest::new(512, 512);
    guest.migrate_unreadable = true;
    let mut rig = Rig::adopt(guest).await;
    let vms = rig
        .registry
        .observe(&rig.config, &rig.metrics, Millis::secs(3))
        .await;
    assert!(!vms[0].sample.migratable);
    rig.guest.lock().expect("guest").migrate_unreadable = false;
    let vms = rig
        .registry
        .observe(&rig.config, &rig.metrics, Millis::secs(4))
        .await;
    assert!(vms[0].sample.migratable);
    // A blocker that goes away (a device unplugged) frees the guest at the next reading.
    let mut guest = Guest::new(512, 512);
    guest.blockers = vec![VFIO];
    let mut rig = Rig::adopt(guest).await;
    rig.guest.lock().expect("guest").blockers.clear();
    let vms = rig
        .registry
        .observe(&rig.config, &rig.metrics, Millis::secs(3))
        .await;
    assert!(vms[0].sample.migratable);
}

/// A config that adopts every `*.qmp` socket in `dir`, with a 20 s command timeout (longer
/// than any tick may wait for a socket).
fn sockets_in(dir: &Path) -> Config {
    let text = format!(
        "[host]\nreserve = \"512MiB\"\n[qemu]\nqmp_glob = \"{}/*.qmp\"\ncommand_timeout = \"20s\"\n",
        dir.display()
    );
    Config::parse(&text, Path::new("a.toml")).expect("config")
}

/// A socket that accepts and never greets (another client holds that QEMU's QMP, or its main
/// loop is stuck) is adopted in the background: the tick goes on after a short wait and the
/// other VMs are adopted and driven meanwhile. (Adopted inside the tick, one socket after
/// another, it held every VM's control for the command timeout every 5 s: session 34.)
#[tokio::test]
async fn a_silent_socket_does_not_hold_up_the_other_vms() {
    let guest = Arc::new(Mutex::new(Guest::new(512, 512)));
    let model = Arc::clone(&guest);
    let fake = FakeQmp::qemu(move |cmd| answer(&mut model.lock().expect("guest"), cmd));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(&fake.path, dir.path().join("good.qmp")).expect("symlink");
    let _silent =
        tokio::net::UnixListener::bind(dir.path().join("silent.qmp")).expect("bind silent");
    let config = sockets_in(dir.path());
    let metrics = Metrics::new();
    let mut registry = VmRegistry::new(&config);
    let t0 = std::time::Instant::now();
    registry.discover(&config, &metrics, Millis::secs(1)).await;
    assert!(
        registry.get("good").is_some(),
        "the answering VM is adopted at once"
    );
    assert!(registry.get("silent").is_none());
    // /status lists it as not adopted, so it is not simply missing. The process behind it
    // is this test's, which the adopted `good` VM's socket also names: one process with two
    // sockets is counted once, as the adopted VM.
    let unadopted = registry.unadopted(|_| true);
    assert_eq!(unadopted.len(), 1, "{unadopted:?}");
    assert_eq!(
        (unadopted[0].name.as_str(), unadopted[0].error.as_deref()),
        ("silent", None)
    );
    assert_eq!(unadopted[0].pid, Some(std::process::id()));
    assert_eq!(unadopted[0].memory, None);
    let vms = registry.observe(&config, &metrics, Millis::secs(2)).await;
    assert_eq!(vms.len(), 1);
    assert!(vms[0].responsive, "{:?}", vms[0]);
    // Well under the 20 s the silent socket may take to fail.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // The next ticks do not wait for it either.
    let t1 = std::time::Instant::now();
    registry.discover(&config, &metrics, Millis::secs(3)).await;
    assert!(
        t1.elapsed() < Duration::from_millis(100),
        "{:?}",
        t1.elapsed()
    );
}

/// The QEMU behind a socket that never greets is known from the socket itself
/// (`SO_PEERCRED`), and what it holds is counted, once per process, where the host charges
/// it: the policy takes it out of capacity (an unadopted guest's memory was room the fit
/// handed out to the others: session 35).
#[tokio::test]
async fn a_silent_sockets_process_is_counted_by_what_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = tokio::net::UnixListener::bind(dir.path().join("a.qmp")).expect("bind a");
    let _b = tokio::net::UnixListener::bind(dir.path().join("b.qmp")).expect("bind b");
    let config = sockets_in(dir.path());
    let metrics = Metrics::new();
    let mut registry = VmRegistry::new(&config);
    registry.discover(&config, &metrics, Millis::secs(1)).await;
    let unadopted = registry.unadopted(|_| true);
    assert_eq!(unadopted.len(), 2, "{unadopted:?}");
    assert!(
        unadopted.iter().all(|u| u.pid == Some(std::process::id())),
        "{unadopted:?}"
    );
    let own = aerostat_qemu::backend::read_rss(std::process::id()).expect("own rss");
    let held: Vec<u64> = unadopted.iter().filter_map(|u| u.memory).collect();
    assert_eq!(held.len(), 1, "one process, counted once: {unadopted:?}");
    assert!(
        held[0] > own.0 / 2 && held[0] < own.0 * 2,
        "{} vs {}",
        held[0],
        own.0
    );
    // A process the host does not charge (outside the daemon's cgroup) is not counted.
    assert!(
        registry
            .unadopted(|_| false)
            .iter()
            .all(|u| u.memory.is_none())
    );
}

/// A socket's file name becomes the VM's name in logs, decision lines and the status
/// table: control characters in it are written escaped, not passed to a terminal.
#[test]
fn control_characters_in_a_socket_name_are_escaped() {
    let name = crate::daemon::vm_name(Path::new("/run/x\u{1b}[2J\nforged.qmp")).expect("a name");
    assert_eq!(name, "x\\u{1b}[2J\\nforged");
    assert!(!name.chars().any(char::is_control));
    assert_eq!(
        crate::daemon::vm_name(Path::new("/run/web-1.qmp")).as_deref(),
        Some("web-1")
    );
}
