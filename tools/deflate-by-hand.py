#!/usr/bin/env python3
"""What a real guest's statistics say right after a balloon inflate and deflate
(docs/benchmarks.md, "Real guests", session 23).

    python3 tools/deflate-by-hand.py --inflate 256 --deflate 408

Boots the test guest (768 MiB, TCG, as the real-VM tests do), polls its balloon statistics
every second, inflates the balloon to --inflate MiB, then deflates it to --deflate MiB, and
prints QEMU's `actual` with the guest's MemTotal / MemAvailable / MemFree every half second,
then the guest's per-CPU page list counts (/proc/zoneinfo) and /proc/meminfo. A Linux 6.x
guest frees a deflate's pages into its per-CPU page lists, which MemFree does not count:
MemTotal − MemAvailable rises by tens of MiB and stays raised for seconds.

Needs qemu-system-x86_64 and the test guest (bash guest/build.sh). QEMU is killed on exit.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "guest"))
import vmctl  # noqa: E402

MIB = 1 << 20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", type=int, default=768, help="guest memory, MiB")
    p.add_argument("--inflate", type=int, default=256, help="balloon target first, MiB")
    p.add_argument("--deflate", type=int, default=408, help="balloon target then, MiB")
    p.add_argument("--watch", type=float, default=20.0, help="seconds to watch after the deflate")
    p.add_argument("--no-free-page-reporting", action="store_true")
    a = p.parse_args()
    guest = os.environ.get("AEROSTAT_GUEST_DIR", "/var/cache/aerostat-guest")
    run_dir = tempfile.mkdtemp()
    qmp, serial, console = (os.path.join(run_dir, n) for n in ("qmp.sock", "serial.sock", "console.log"))
    balloon = "virtio-balloon-pci,id=balloon0" + ("" if a.no_free_page_reporting else ",free-page-reporting=on")
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-machine", "pc",
         "-accel", "tcg,tb-size=32", "-cpu", "max", "-smp", "1", "-m", f"{a.memory}M",
         "-display", "none", "-vga", "none", "-no-reboot",
         "-kernel", f"{guest}/vmlinuz", "-initrd", f"{guest}/initramfs.cpio.gz",
         "-append", "console=ttyS0 quiet panic=-1",
         "-chardev", f"socket,id=ser0,path={serial},server=on,wait=off,logfile={console}",
         "-serial", "chardev:ser0", "-qmp", f"unix:{qmp},server=on,wait=off", "-device", balloon],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        vmctl.wait_ready(serial, console, qemu.pid, 120)
        q = vmctl.Qmp(qmp)
        path = "/machine/peripheral/balloon0"
        q.execute("qom-set", {"path": path, "property": "guest-stats-polling-interval", "value": 1})
        t0 = time.monotonic()

        def show(tag):
            s = q.execute("qom-get", {"path": path, "property": "guest-stats"})
            st = s["stats"]
            m = {k: st.get(f"stat-{k}-memory", 0) / MIB for k in ("total", "available", "free")}
            actual = q.execute("query-balloon")["actual"] // MIB
            print(f"{time.monotonic() - t0:6.2f} s {tag:>12} actual {actual:5} MiB | stats from "
                  f"{s['last-update'] % 1000:3}: MemTotal {m['total']:6.1f} MemAvailable "
                  f"{m['available']:6.1f} MemFree {m['free']:6.1f} total−available "
                  f"{m['total'] - m['available']:6.1f} MiB", flush=True)

        for _ in range(4):
            show("idle")
            time.sleep(0.5)
        q.execute("balloon", {"value": a.inflate * MIB})
        for _ in range(8):
            show(f"→ {a.inflate}")
            time.sleep(0.25)
        q.execute("balloon", {"value": a.deflate * MIB})
        for _ in range(int(a.watch * 2)):
            show(f"→ {a.deflate}")
            time.sleep(0.5)
        _, out = vmctl.run(serial, "grep -E 'zone |count:|high:' /proc/zoneinfo; head -5 /proc/meminfo", 30)
        print(out.decode(errors="replace").replace("@@AEROSTAT", "").strip())
    finally:
        qemu.kill()
        qemu.wait()


if __name__ == "__main__":
    main()
