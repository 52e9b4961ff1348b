#!/bin/bash
# How a real guest answers balloon steps into its reclaim zone (docs/benchmarks.md, "Real
# guests", session 18). Boots the test guest (1 GiB, TCG, 512 MiB swap on virtio-blk), runs
# `memhog 100 --dirty --rate 50` (hot) next to `memhog 300` (touched once, cold), sets the
# balloon to 771 MiB, then to each of TARGETS (MiB), holding each HOLD seconds, and prints
# the guest's meminfo and swap/reclaim counters every second.
#
#   TARGETS="582 550 518 486 454" HOLD=1 bash tools/squeeze-by-hand.sh
#
# Needs qemu-system-x86_64 and the test guest (bash guest/build.sh). QEMU is killed on exit.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
guest=${AEROSTAT_GUEST_DIR:-/var/cache/aerostat-guest}
run_dir=$(mktemp -d)
vmctl=(python3 "$here/guest/vmctl.py")
truncate -s 512M "$run_dir/swap.img"
qemu-system-x86_64 -nodefaults -no-user-config -machine pc -accel tcg -cpu max \
    -smp 1 -m 1024M -display none -vga none -no-reboot \
    -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1" \
    -chardev "socket,id=ser0,path=$run_dir/serial.sock,server=on,wait=off,logfile=$run_dir/console.log" \
    -serial chardev:ser0 -qmp "unix:$run_dir/qmp.sock,server=on,wait=off" \
    -device virtio-balloon-pci,id=balloon0,free-page-reporting=on \
    -drive "file=$run_dir/swap.img,if=none,id=swap0,format=raw,cache=unsafe" \
    -device virtio-blk-pci,drive=swap0 >"$run_dir/qemu.out" 2>&1 &
qemu_pid=$!
trap 'kill "$qemu_pid" 2>/dev/null; rm -rf "$run_dir"' EXIT
"${vmctl[@]}" wait-ready --serial "$run_dir/serial.sock" --log "$run_dir/console.log" \
    --pid "$qemu_pid" --timeout 120
in_guest() { "${vmctl[@]}" run --serial "$run_dir/serial.sock" --timeout 60 "$1" | sed '/@@AEROSTAT/d'; }
balloon() { "${vmctl[@]}" balloon --qmp "$run_dir/qmp.sock" --target-mib "$1" --timeout 30 >/dev/null || true; }
snapshot() {
    local meminfo="grep -E '^(MemTotal|MemFree|MemAvailable|SwapFree):' /proc/meminfo"
    local vmstat="grep -E '^(pswpin|pswpout|pgscan_kswapd|pgscan_direct|pgsteal_kswapd|pgsteal_direct) ' /proc/vmstat"
    in_guest "{ $meminfo; $vmstat; } | tr -s ' ' | tr '\n' ' '; echo"
}
in_guest "mkswap /dev/vda >/dev/null && swapon /dev/vda"
in_guest "memhog 100 --dirty --rate 50 --quiet >/tmp/hot.log 2>&1 &"
in_guest "memhog 300 --quiet >/tmp/cold.log 2>&1 &"
sleep 20
echo "MGLRU: $(in_guest 'cat /sys/kernel/mm/lru_gen/enabled 2>/dev/null || echo off'); min_free_kbytes: $(in_guest 'cat /proc/sys/vm/min_free_kbytes')"
echo "== before: $(snapshot)"
balloon 771
sleep 10
echo "== at 771 MiB: $(snapshot)"
for target in ${TARGETS:-480 448 416 384 352}; do
    balloon "$target"
    for i in $(seq 1 "${HOLD:-5}"); do
        sleep 1
        echo "== $target MiB +${i}s: $(snapshot)"
    done
done
