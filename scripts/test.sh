#!/usr/bin/env bash
# Runs every test: unit tests, the libvirt test-driver tests, the real-host
# tests and the end-to-end tests that boot guests (TCG, user networking).
# Needs root and a running libvirtd (scripts/setup-host.sh does both).
#
#   scripts/test.sh          everything
#   scripts/test.sh fast     unit + test-driver tests only (no root, no libvirtd)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == fast ]]; then
  exec cargo test --locked
fi

t0=$SECONDS
cargo fmt --check
cargo clippy --locked --all-targets --quiet -- -D warnings
export PROJECT_VM_TEST_IMAGE=${PROJECT_VM_TEST_IMAGE:-$(tests/images/build-debian.sh)}
echo "test image: $PROJECT_VM_TEST_IMAGE ($((SECONDS - t0)) s)"
# The guest-booting tests run one at a time: each guest wants both cores.
cargo test --locked -- --include-ignored --test-threads=1 --nocapture 2>&1 | tee /tmp/project-vm-test.log
grep '^TIMING' /tmp/project-vm-test.log || true
echo "all tests: $((SECONDS - t0)) s"
