#!/usr/bin/env bash
# Build the aerostat test guest: a Debian 6.12 cloud kernel and a small busybox initramfs.
#
#   guest/build.sh [OUTDIR]      OUTDIR defaults to ${AEROSTAT_GUEST_DIR:-/var/cache/aerostat-guest}
#
# Writes OUTDIR/vmlinuz, OUTDIR/initramfs.cpio.gz and OUTDIR/manifest.txt (written last; it
# names the recipe hash). The recipe hash covers this script, memhog.c and init: while it
# matches the manifest, the script does nothing. Downloaded .debs are kept in OUTDIR/debs.
# Needs the apt lists with bookworm-backports (guest/install-host-deps.sh), gcc, cpio, xz, gzip.
#
# Environment:
#   AEROSTAT_GUEST_DIR         default OUTDIR
#   AEROSTAT_GUEST_KERNEL_PKG  exact kernel package (e.g. linux-image-6.12.95+deb12-cloud-amd64)
#                              instead of the one resolved from bookworm-backports
#   AEROSTAT_GUEST_REBUILD=1   rebuild even if the cache matches
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-${AEROSTAT_GUEST_DIR:-/var/cache/aerostat-guest}}
MODULES=(virtio_balloon virtio_mem virtio_blk)

log() { printf 'guest/build: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

RECIPE=$(cat "$HERE/build.sh" "$HERE/memhog.c" "$HERE/init" | sha256sum | cut -d' ' -f1)

cached() {
    [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.cpio.gz" ] && [ -f "$OUT/manifest.txt" ] &&
        grep -qx "recipe-sha256: $RECIPE" "$OUT/manifest.txt"
}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ "${AEROSTAT_GUEST_REBUILD:-0}" != 1 ] && cached; then
    log "up to date: $OUT ($(sed -n 's/^kernel-package: //p' "$OUT/manifest.txt"))"
    exit 0
fi

# One builder at a time per OUTDIR; a waiter finds the finished cache.
exec 9>"$OUT/.lock"
flock 9
if [ "${AEROSTAT_GUEST_REBUILD:-0}" != 1 ] && cached; then
    log "up to date: $OUT (built by a concurrent run)"
    exit 0
fi

for t in apt-cache apt-get dpkg-deb gcc cpio xz gzip sha256sum; do
    command -v "$t" >/dev/null || die "missing $t: run guest/install-host-deps.sh"
done

T0=$(date +%s.%N)
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- 1. resolve and download the packages ------------------------------------------------
is612() { [[ "$1" =~ ^linux-image-6\.12\.[^[:space:]]*-cloud-amd64$ ]]; }
depends_of() { { apt-cache depends "$@" 2>/dev/null || true; } | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1; }

KPKG=${AEROSTAT_GUEST_KERNEL_PKG:-}
if [ -z "$KPKG" ]; then
    # The backports meta package points at the current backports 6.12 cloud kernel.
    KPKG=$(depends_of -t bookworm-backports linux-image-cloud-amd64)
    if ! is612 "$KPKG"; then
        # Backports moved on (or is gone): the 6.12 meta package, wherever it lives.
        KPKG=$(depends_of linux-image-6.12-cloud-amd64)
    fi
    if ! is612 "$KPKG"; then
        KPKG=$(apt-cache pkgnames linux-image-6.12. | grep -E -- '-cloud-amd64$' | sort -V | tail -1 || true)
    fi
fi
is612 "$KPKG" || die "no linux-image-6.12.*-cloud-amd64 package known to apt (KPKG='$KPKG'): run guest/install-host-deps.sh"

DEBS="$OUT/debs"
mkdir -p "$DEBS"
fetch() { # PACKAGE -> prints the path of its .deb, downloading it if not cached
    local pkg=$1 ver file
    ver=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "apt knows no candidate for $pkg"
    file=
    for f in "$DEBS/${pkg}_"*_amd64.deb; do
        if [ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ]; then file=$f; break; fi
    done
    if [ -z "$file" ]; then
        log "downloading $pkg $ver"
        mkdir -p "$WORK/dl"
        (cd "$WORK/dl" && apt-get -qq -o APT::Sandbox::User=root download "$pkg=$ver" >/dev/null)
        rm -f "$DEBS/${pkg}_"*.deb
        for f in "$WORK/dl/${pkg}_"*.deb; do
            [ -f "$f" ] || die "apt-get download $pkg=$ver produced no .deb"
            file="$DEBS/${f##*/}"
            mv "$f" "$file"
        done
    fi
    echo "$file"
}
KDEB=$(fetch "$KPKG")
BDEB=$(fetch busybox-static)
KVER_PKG=$(dpkg-deb -f "$KDEB" Version)
BB_PKG=$(dpkg-deb -f "$BDEB" Version)

# ---- 2. kernel and modules ----------------------------------------------------------------
mkdir -p "$WORK/k" "$WORK/bb"
dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$WORK/k" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/*' './usr/lib/modules/*/kernel/*' 2>/dev/null || true
VMLINUZ=$(ls "$WORK"/k/boot/vmlinuz-* 2>/dev/null | head -1 || true)
[ -n "$VMLINUZ" ] || die "no /boot/vmlinuz-* in $KDEB"
KREL=${VMLINUZ##*/vmlinuz-}
MODROOT=
for d in "$WORK/k/lib/modules/$KREL" "$WORK/k/usr/lib/modules/$KREL"; do
    if [ -d "$d" ]; then MODROOT=$d; break; fi
done
[ -n "$MODROOT" ] || die "no modules directory for $KREL in $KDEB"

modfile() { # NAME -> path of NAME.ko[.xz|.zst|.gz] (- and _ are the same in module names)
    local n1=${1//-/_} n2=${1//_/-}
    find "$MODROOT" \( -name "$n1.ko*" -o -name "$n2.ko*" \) -print -quit
}
modinfo_field() { # FILE.ko FIELD -> value (from the .modinfo section)
    if command -v modinfo >/dev/null; then
        modinfo -F "$2" "$1"
    else
        tr '\0' '\n' <"$1" | sed -n "s/^$2=//p;T;q"
    fi
}
mkdir -p "$WORK/root/lib/modules" "$WORK/root/etc/aerostat"
ORDER=()
declare -A SEEN=()
add_module() { # depth-first: dependencies first
    local name=${1//-/_} f ko deps d
    [ -z "${SEEN[$name]:-}" ] || return 0
    SEEN[$name]=1
    f=$(modfile "$name")
    [ -n "$f" ] || die "module $name not in $KDEB (built in?)"
    ko="$WORK/root/lib/modules/$name.ko"
    case "$f" in
        *.ko.xz) xz -dc "$f" >"$ko" ;;
        *.ko.zst) zstd -dcq "$f" >"$ko" ;;
        *.ko.gz) gzip -dc "$f" >"$ko" ;;
        *.ko) cp "$f" "$ko" ;;
    esac
    deps=$(modinfo_field "$ko" depends)
    for d in ${deps//,/ }; do add_module "$d"; done
    ORDER+=("$name")
}
for m in "${MODULES[@]}"; do add_module "$m"; done
printf '%s\n' "${ORDER[@]}" >"$WORK/root/etc/aerostat/modules"

# ---- 3. busybox, memhog, init -------------------------------------------------------------
dpkg-deb --fsys-tarfile "$BDEB" | tar -x -C "$WORK/bb" ./bin/busybox
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc}
cp "$WORK/bb/bin/busybox" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list-full); do
    [ -e "$R/$applet" ] || ln -s /bin/busybox "$R/$applet"
done
BB_VER=$({ "$R/bin/busybox" --help 2>&1 || true; } | sed -n 's/^BusyBox \(v[^ ]*\).*/\1/p;T;q')
gcc -static -O2 -Wall -o "$R/bin/memhog" "$HERE/memhog.c"
strip "$R/bin/memhog" 2>/dev/null || true
install -m 0755 "$HERE/init" "$R/init"
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
echo 'root:x:0:' >"$R/etc/group"
chmod 1777 "$R/tmp"
# /dev/console for init's first stdio (the kernel opens it before /init runs devtmpfs).
mknod -m 600 "$R/dev/console" c 5 1
find "$R" -exec touch -h -d @0 {} + # reproducible archive
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) >"$WORK/initramfs.cpio"
gzip -9n <"$WORK/initramfs.cpio" >"$WORK/initramfs.cpio.gz"
cp "$VMLINUZ" "$WORK/vmlinuz"

# ---- 4. install atomically; manifest last -------------------------------------------------
T1=$(date +%s.%N)
cat >"$WORK/manifest.txt" <<EOF
recipe-sha256: $RECIPE
kernel-package: $KPKG $KVER_PKG
kernel-release: $KREL
busybox-package: busybox-static $BB_PKG
busybox-version: $BB_VER
modules: ${ORDER[*]}
vmlinuz-bytes: $(stat -c %s "$WORK/vmlinuz")
initramfs-bytes: $(stat -c %s "$WORK/initramfs.cpio.gz")
initramfs-uncompressed-bytes: $(stat -c %s "$WORK/initramfs.cpio")
memhog-bytes: $(stat -c %s "$R/bin/memhog")
vmlinuz-sha256: $(sha256sum <"$WORK/vmlinuz" | cut -d' ' -f1)
initramfs-sha256: $(sha256sum <"$WORK/initramfs.cpio.gz" | cut -d' ' -f1)
built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s
EOF
rm -f "$OUT/manifest.txt"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
mv -f "$WORK/manifest.txt" "$OUT/manifest.txt"
# Drop .debs that are no longer used.
for f in "$DEBS"/*.deb; do
    [ "$f" = "$KDEB" ] || [ "$f" = "$BDEB" ] || rm -f "$f"
done
log "built $OUT in $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s: $KPKG $KVER_PKG, busybox $BB_VER, modules ${ORDER[*]}"
