#!/bin/sh
# /etc/libvirt/hooks/qemu (chmod +x): refuse to start a guest that aerostat says does not fit.
#
# libvirt runs it as `qemu GUEST OPERATION SUB-OPERATION EXTRA` with the domain XML on stdin;
# a non-zero exit at `prepare begin` stops the guest from starting, and libvirt shows what
# this printed on stderr. docs/admission.md explains the answer.
#
# AEROSTAT_API: the daemon's api.listen (default 127.0.0.1:9464); AEROSTAT_BIN: the binary
# (default: aerostat on PATH). With no daemon to ask (exit 3) the guest starts: fail open, as
# a host without aerostat would; change the last case to fail closed.
set -u
[ "${2:-}" = "prepare" ] && [ "${3:-}" = "begin" ] || exit 0
api=${AEROSTAT_API:-127.0.0.1:9464}
bin=${AEROSTAT_BIN:-aerostat}
xml=$(cat)
# libvirt writes <memory unit='KiB'>8388608</memory> (the guest's maximum) in KiB.
kib=$(printf '%s\n' "$xml" | sed -n "s/.*<memory unit='KiB'>\([0-9][0-9]*\)<\/memory>.*/\1/p" | head -n 1)
if [ -z "$kib" ]; then
    echo "aerostat hook: no <memory unit='KiB'> in the domain XML of $1; not asked" >&2
    exit 0
fi
# All of a guest counts, never overcommitted, when nothing can resize it (<memballoon
# model='none'/> and no virtio-mem) or its memory is pinned: locked, huge pages, or a
# passthrough device (<hostdev>: QEMU pins all guest RAM for its DMA).
resizable=
if { printf '%s\n' "$xml" | grep -q "<memballoon model='none'" &&
    ! printf '%s\n' "$xml" | grep -q "model='virtio-mem'"; } ||
    printf '%s\n' "$xml" | grep -q -e '<hostdev' -e '<locked/>' -e '<hugepages'; then
    resizable=--not-resizable
fi
answer=$("$bin" admit --api "$api" --name "$1" --memory "${kib}KiB" $resizable 2>&1)
rc=$?
case $rc in
    0) exit 0 ;;
    3) echo "aerostat hook: $answer; starting $1 anyway" >&2; exit 0 ;;
    *) echo "aerostat hook: $1: $answer" >&2; exit 1 ;;
esac
