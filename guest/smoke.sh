#!/usr/bin/env bash
# Smoke test of the test guest: boot it, run a command over the serial socket, inflate the
# balloon by 256 MiB over QMP and check that the guest's MemTotal dropped.
#
#   guest/smoke.sh [GUEST_DIR]     GUEST_DIR defaults to ${AEROSTAT_GUEST_DIR:-/var/cache/aerostat-guest}
#
# AEROSTAT_ACCEL=auto|kvm|tcg (default auto: KVM only if a KVM boot reaches the ready marker
# within AEROSTAT_KVM_PROBE_S seconds, default 15; on machines whose nested KVM is broken QEMU
# aborts at once, so the probe costs ~0.1 s). Prints "N passed, N failed" at the end.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
G=${1:-${AEROSTAT_GUEST_DIR:-/var/cache/aerostat-guest}}
ACCEL=${AEROSTAT_ACCEL:-auto}
MEM_MIB=1024
INFLATE_MIB=256
VMCTL=(python3 "$HERE/vmctl.py")
VMPID=

for f in vmlinuz initramfs.cpio.gz; do
    [ -s "$G/$f" ] || { echo "smoke: $G/$f missing: run guest/build.sh" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "smoke: no qemu-system-x86_64: run guest/install-host-deps.sh" >&2; exit 1; }

RUN=$(mktemp -d /tmp/aerostat-smoke.XXXXXX)
QPID=
cleanup() {
    if [ -n "$VMPID" ]; then kill "$VMPID" 2>/dev/null || true; fi
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill "$QPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$QPID" 2>/dev/null || true
    fi
    if [ "${KEEP_RUN_DIR:-0}" != 1 ]; then rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# vm ARGS...: run vmctl.py in the background and `wait` for it, so that a SIGTERM to this
# script runs the trap at once (bash defers traps while a foreground command runs). Its stdout
# is left in $RUN/vm.out; returns its exit code.
vm() {
    "${VMCTL[@]}" "$@" >"$RUN/vm.out" &
    VMPID=$!
    local rc=0
    wait "$VMPID" || rc=$?
    VMPID=
    return "$rc"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

start_qemu() { # ACCEL -> starts QEMU in the background, sets QPID
    local accel=$1 cpu=max
    [ "$accel" = kvm ] && cpu=host
    rm -f "$RUN"/*.sock "$RUN/console.log"
    qemu-system-x86_64 -nodefaults -no-user-config -machine pc -accel "$accel" -cpu "$cpu" \
        -smp 1 -m "${MEM_MIB}M" -display none -vga none -no-reboot \
        -kernel "$G/vmlinuz" -initrd "$G/initramfs.cpio.gz" \
        -append "console=ttyS0 quiet panic=-1" \
        -chardev "socket,id=ser0,path=$RUN/serial.sock,server=on,wait=off,logfile=$RUN/console.log" \
        -serial chardev:ser0 \
        -qmp "unix:$RUN/qmp.sock,server=on,wait=off" \
        -device virtio-balloon-pci,id=balloon0,free-page-reporting=on \
        >"$RUN/qemu.out" 2>&1 &
    QPID=$!
    disown "$QPID" # no "Aborted" job notice from bash if QEMU dies (the KVM probe)
}

boot() { # ACCEL TIMEOUT -> 0 when ready
    local accel=$1 timeout=$2 t0
    t0=$(now)
    start_qemu "$accel"
    if vm wait-ready --serial "$RUN/serial.sock" --log "$RUN/console.log" \
            --pid "$QPID" --timeout "$timeout"; then
        echo "smoke: $accel guest ready in $(since "$t0") s (launch to ready marker)"
        return 0
    fi
    echo "smoke: $accel boot failed: $(tail -c 300 "$RUN/qemu.out" | tr '\n' ' ')" >&2
    kill "$QPID" 2>/dev/null || true
    QPID=
    return 1
}

PASS=0 FAIL=0
ok() { echo "ok: $*"; PASS=$((PASS + 1)); }
bad() { echo "FAIL: $*"; FAIL=$((FAIL + 1)); }

# ---- boot -----------------------------------------------------------------------------------
booted=
if [ "$ACCEL" = auto ] || [ "$ACCEL" = kvm ]; then
    if [ -r /dev/kvm ] && [ -w /dev/kvm ] && boot kvm "${AEROSTAT_KVM_PROBE_S:-15}"; then
        booted=kvm
    elif [ "$ACCEL" = kvm ]; then
        echo "smoke: KVM requested but does not work here" >&2; exit 1
    else
        echo "smoke: KVM not usable, using TCG"
    fi
fi
if [ -z "$booted" ]; then
    boot tcg 120 || { bad "boot under TCG"; cat "$RUN/console.log" >&2 || true; echo "$PASS passed, $FAIL failed"; exit 1; }
    booted=tcg
fi
ok "boot ($booted)"

# ---- serial command --------------------------------------------------------------------------
# guest CMD [TIMEOUT]: run CMD in the guest; sets $out (its output) and $rc (its exit code).
guest() {
    rc=0
    vm run --serial "$RUN/serial.sock" --timeout "${2:-30}" "$1" || rc=$?
    out=$(cat "$RUN/vm.out")
}
meminfo() { guest 'cat /proc/meminfo | head -3'; }
meminfo
echo "$out"
total0=$(awk '/^MemTotal:/ {print $2}' <<<"$out")
if [ "$rc" = 0 ] && [ -n "$total0" ]; then ok "serial command (MemTotal $total0 kB)"; else bad "serial command rc=$rc"; fi

guest 'lsmod | grep -c "^virtio_\(balloon\|mem\) "'
if [ "$rc" = 0 ] && [ "$out" = 2 ]; then ok "virtio_balloon and virtio_mem loaded"; else bad "modules: rc=$rc out=$out"; fi

# a background command must not block the loop; memhog works
guest 'memhog 64 --hold 600 >/tmp/memhog.log 2>&1 &' 10
if [ "$rc" = 0 ]; then ok "background command returns at once"; else bad "background command rc=$rc"; fi
guest 'for i in $(seq 100); do grep -q holding /tmp/memhog.log && break; sleep 0.1; done; cat /tmp/memhog.log; kill $(pidof memhog)'
if [ "$rc" = 0 ] && grep -q 'holding 64 MiB' <<<"$out"; then ok "memhog 64 MiB"; else bad "memhog: rc=$rc $out"; fi

# ---- balloon --------------------------------------------------------------------------------
target=$((MEM_MIB - INFLATE_MIB))
if vm balloon --qmp "$RUN/qmp.sock" --target-mib "$target" --timeout 60; then
    echo "smoke: balloon inflated by $INFLATE_MIB MiB in $(cat "$RUN/vm.out") s"
    meminfo
    total1=$(awk '/^MemTotal:/ {print $2}' <<<"$out")
    drop=$(( ${total0:-0} - ${total1:-0} ))
    echo "smoke: MemTotal $total0 -> $total1 kB (-$drop kB)"
    # MemTotal drops by the balloon size (262144 kB); allow a little slack.
    if [ "$drop" -ge $((INFLATE_MIB * 1024 * 95 / 100)) ] && [ "$drop" -le $((INFLATE_MIB * 1024 * 105 / 100)) ]; then
        ok "balloon inflate: MemTotal dropped by $drop kB"
    else
        bad "balloon inflate: MemTotal dropped by $drop kB, expected ~$((INFLATE_MIB * 1024))"
    fi
    if vm balloon --qmp "$RUN/qmp.sock" --target-mib "$MEM_MIB" --timeout 60; then
        echo "smoke: balloon deflated in $(cat "$RUN/vm.out") s"
        ok "balloon deflate"
    else
        bad "balloon deflate"
    fi
else
    bad "balloon inflate timed out"
fi

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
