#!/usr/bin/env bash
# Install what the real-VM tests need on a Debian 12 (bookworm) host.
# Run as root. Idempotent: a second run that finds everything in place does no apt work.
#
#  - adds bookworm-backports as an apt source, with the URI of the first stanza of
#    /etc/apt/sources.list.d/debian.sources (no host is hard-coded here);
#  - installs qemu-system-x86 from bookworm-backports (--no-install-recommends): the image
#    ships qemu-utils from backports, which conflicts with bookworm's own qemu-system-x86;
#  - installs what guest/build.sh needs: cpio, xz-utils, gzip, kmod (modinfo), gcc, libc6-dev,
#    and python3 (smoke.sh and the serial/QMP helpers).
set -euo pipefail

log() { printf 'install-host-deps: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root"; exit 1
fi

export DEBIAN_FRONTEND=noninteractive
SRC=/etc/apt/sources.list.d/debian.sources
BPO=/etc/apt/sources.list.d/bookworm-backports.sources
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
PKGS=(cpio xz-utils gzip kmod gcc libc6-dev python3)

# --- 1. bookworm-backports source ------------------------------------------------------------
if [ ! -r "$SRC" ]; then
    log "$SRC not found: cannot derive the Debian mirror URI"; exit 1
fi
# URIs: of the first stanza (stanzas are separated by blank lines). Take its first URI.
URI=$(awk '/^[[:space:]]*#/ { next }
           /^[[:space:]]*$/ { if (seen) exit; next }
           { seen=1 } tolower($1)=="uris:" { print $2; exit }' "$SRC")
if [ -z "$URI" ]; then
    log "no URIs: line in the first stanza of $SRC"; exit 1
fi
WANT="Types: deb
URIs: $URI
Suites: bookworm-backports
Components: main
Signed-By: $KEYRING"

need_update=0
if [ ! -f "$BPO" ] || [ "$(cat "$BPO")" != "$WANT" ]; then
    printf '%s\n' "$WANT" > "$BPO"
    log "wrote $BPO (URI $URI)"
    need_update=1
fi
# Package lists for backports present? (apt-cache in build.sh needs them too.)
if ! compgen -G '/var/lib/apt/lists/*_dists_bookworm-backports_main_binary-amd64_Packages*' >/dev/null; then
    need_update=1
fi

# --- 2. what is missing? ---------------------------------------------------------------------
installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done

qemu_ok=0
if installed qemu-system-x86 && command -v qemu-system-x86_64 >/dev/null; then
    qv=$(dpkg-query -W -f='${Version}' qemu-system-x86)
    case "$qv" in *bpo12*) qemu_ok=1 ;; esac
fi

if [ "$qemu_ok" = 1 ] && [ ${#missing[@]} -eq 0 ] && [ "$need_update" = 0 ]; then
    log "all present (qemu-system-x86 $qv)"; exit 0
fi

# --- 3. install -----------------------------------------------------------------------------
t0=$(date +%s.%N)
apt-get update -qq
if [ "$qemu_ok" = 0 ]; then
    log "installing qemu-system-x86 from bookworm-backports"
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
t1=$(date +%s.%N)
log "done in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s: $(qemu-system-x86_64 --version | head -1)"
