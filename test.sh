#!/usr/bin/env bash
# aerostat's test command (README "Test it"; CI runs it through .ci/run).
# Format, lints, every unit/property/integration test, then the real-guest smoke test.
# Tests that need QEMU or the built guest print SKIP when those are missing; `.ci/run`
# installs both first, so in CI nothing is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (deny warnings)"
cargo clippy --workspace --all-targets --release -- -D warnings

step "cargo test"
cargo test --workspace --release

if command -v qemu-system-x86_64 >/dev/null 2>&1; then
    step "real guest smoke test (QEMU, balloon round trip)"
    bash guest/smoke.sh
else
    echo "SKIP: qemu-system-x86_64 not installed (run guest/install-host-deps.sh)"
fi
