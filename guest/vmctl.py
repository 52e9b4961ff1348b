#!/usr/bin/env python3
"""Talk to an aerostat test guest from the host: serial command protocol and QMP.

Standard library only. Used by guest/smoke.sh; handy by hand:

  vmctl.py wait-ready --serial S.sock [--log console.log] [--pid QEMU_PID] [--timeout 60]
  vmctl.py run --serial S.sock [--timeout 30] 'cat /proc/meminfo | head -3'
  vmctl.py qmp --qmp Q.sock query-balloon ['{"arg": ...}']
  vmctl.py balloon --qmp Q.sock --target-mib 768 [--timeout 30]

Serial protocol (guest/init): the guest prints "@@AEROSTAT-READY@@" when its command loop
starts; each line sent is run as `sh -c LINE`, its output follows, then
"@@AEROSTAT-DONE <rc>@@\\n". The marker starts a line unless the command's output did not end
with a newline, so match it anywhere. Output produced while no client is connected to the
serial socket is lost (it is still in QEMU's logfile, if one was given).
"""
import argparse
import json
import os
import re
import socket
import sys
import time

READY = b"@@AEROSTAT-READY@@"
DONE = re.compile(rb"@@AEROSTAT-DONE (-?\d+)@@\r?\n")


def connect_unix(path, deadline):
    """Connect to a unix socket, retrying until it exists and accepts or the deadline."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"cannot connect to {path}")
            time.sleep(0.02)


def pid_alive(pid):
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_ready(serial, log=None, pid=None, timeout=60.0):
    """Wait for the READY marker on the serial socket (or already in QEMU's logfile).
    Returns seconds waited. Raises TimeoutError, or RuntimeError if QEMU died."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    sock = None
    buf = b""
    try:
        while True:
            if sock is None:
                try:
                    sock = connect_unix(serial, min(deadline, time.monotonic() + 0.2))
                    sock.settimeout(0.05)
                except TimeoutError:
                    sock = None
            if sock is not None:
                try:
                    data = sock.recv(65536)
                    if not data:
                        sock.close()
                        sock = None
                    buf += data
                except socket.timeout:
                    pass
            if READY in buf:
                return time.monotonic() - t0
            if log and os.path.exists(log):
                with open(log, "rb") as f:
                    if READY in f.read():
                        return time.monotonic() - t0
            if not pid_alive(pid):
                raise RuntimeError(f"QEMU (pid {pid}) exited before the guest was ready")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"guest not ready after {timeout} s")
    finally:
        if sock is not None:
            sock.close()


def run(serial, command, timeout=30.0):
    """Run one command in the guest; returns (rc, output bytes)."""
    if "\n" in command:
        raise ValueError("one line per command")
    deadline = time.monotonic() + timeout
    sock = connect_unix(serial, deadline)
    sock.settimeout(0.1)
    try:
        sock.sendall(command.encode() + b"\n")
        buf = b""
        while time.monotonic() < deadline:
            m = DONE.search(buf)
            if m:
                return int(m.group(1)), buf[: m.start()]
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise RuntimeError("serial socket closed")
            buf += data
        # Interrupt the command so the loop is usable again.
        sock.sendall(b"\x03")
        raise TimeoutError(f"no answer to {command!r} after {timeout} s; sent ^C. Output: {buf!r}")
    finally:
        sock.close()


class Qmp:
    def __init__(self, path, timeout=10.0):
        self.sock = connect_unix(path, time.monotonic() + timeout)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rwb")
        self.events = []
        greeting = json.loads(self.f.readline())
        assert "QMP" in greeting, greeting
        self.execute("qmp_capabilities")

    def execute(self, cmd, args=None):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP connection closed")
            r = json.loads(line)
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise RuntimeError(f"QMP {cmd}: {r['error']}")
            return r.get("return")

    def close(self):
        self.sock.close()


def balloon(qmp_path, target_mib, timeout=30.0):
    """Set the balloon target and wait until `actual` reaches it. Returns seconds taken."""
    q = Qmp(qmp_path)
    try:
        target = target_mib << 20
        t0 = time.monotonic()
        q.execute("balloon", {"value": target})
        while True:
            actual = q.execute("query-balloon")["actual"]
            if actual == target:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"balloon actual {actual >> 20} MiB, target {target_mib} MiB")
            time.sleep(0.05)
    finally:
        q.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-ready")
    w.add_argument("--serial", required=True)
    w.add_argument("--log")
    w.add_argument("--pid", type=int)
    w.add_argument("--timeout", type=float, default=60)
    r = sub.add_parser("run")
    r.add_argument("--serial", required=True)
    r.add_argument("--timeout", type=float, default=30)
    r.add_argument("command")
    q = sub.add_parser("qmp")
    q.add_argument("--qmp", required=True)
    q.add_argument("execute")
    q.add_argument("arguments", nargs="?")
    b = sub.add_parser("balloon")
    b.add_argument("--qmp", required=True)
    b.add_argument("--target-mib", type=int, required=True)
    b.add_argument("--timeout", type=float, default=30)
    a = p.parse_args()
    try:
        if a.cmd == "wait-ready":
            print(f"{wait_ready(a.serial, a.log, a.pid, a.timeout):.2f}")
        elif a.cmd == "run":
            rc, out = run(a.serial, a.command, a.timeout)
            sys.stdout.buffer.write(out)
            sys.stdout.flush()
            sys.exit(rc if 0 <= rc < 256 else 255)
        elif a.cmd == "qmp":
            qm = Qmp(a.qmp)
            print(json.dumps(qm.execute(a.execute, json.loads(a.arguments) if a.arguments else None)))
            qm.close()
        elif a.cmd == "balloon":
            print(f"{balloon(a.qmp, a.target_mib, a.timeout):.2f}")
    except (TimeoutError, RuntimeError) as e:
        print(f"vmctl: {e}", file=sys.stderr)
        sys.exit(124 if isinstance(e, TimeoutError) else 125)


if __name__ == "__main__":
    main()
