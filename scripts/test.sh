#!/usr/bin/env bash
# Runs every test: unit and property tests, the libvirt test-driver tests,
# cloud-init's and libvirt's own validators on what project-vm generates, the
# real-host tests, and the end-to-end tests that boot guests (TCG, user
# networking) on two images. Needs root and a running libvirtd
# (scripts/setup-host.sh does both).
#
#   scripts/test.sh          everything
#   scripts/test.sh fast     unit + test-driver tests only (no root, no libvirtd)
set -euo pipefail
cd "$(dirname "$0")/.."

# The crash tests' hooks (src/fault.rs) exist only with this feature; a
# release build has none. `fast` tests the default build, which is also where
# the test that the default build ignores the hooks' variables runs.
features=(--features fault-injection)
if [[ ${1:-} == fast ]]; then
  exec cargo test --locked
fi

t0=$SECONDS
log=${TMPDIR:-/tmp}/project-vm-test.$$
mkdir -p "$log"
# The guest images and validators come from Debian's archive (network and
# disk bound): made while the tests compile (CPU bound). Each is cached and
# reused when its script has not changed.
prepare() {
  local name=$1
  shift
  if ! "$@" >"$log/$name.out" 2>"$log/$name.err"; then
    echo "preparing $name failed:" >&2
    tail -30 "$log/$name.err" >&2
    return 1
  fi
}
pids=()
if [[ -z ${PROJECT_VM_TEST_IMAGE:-} ]]; then prepare bookworm tests/images/build-debian.sh bookworm & pids+=($!); fi
if [[ -z ${PROJECT_VM_TEST_IMAGE_TRIXIE:-} ]]; then prepare trixie tests/images/build-debian.sh trixie & pids+=($!); fi
if [[ -z ${PROJECT_VM_CLOUD_INIT_VALIDATORS:-} ]]; then prepare validators scripts/cloud-init-validators.sh & pids+=($!); fi
prepare virtiofsd scripts/install-virtiofsd.sh & pids+=($!)

cargo fmt --check
cargo clippy --locked --all-targets --quiet -- -D warnings
cargo clippy --locked --all-targets --quiet "${features[@]}" -- -D warnings
cargo test --locked --no-run --quiet "${features[@]}"
for p in "${pids[@]}"; do wait "$p"; done
export PROJECT_VM_TEST_IMAGE=${PROJECT_VM_TEST_IMAGE:-$(cat "$log/bookworm.out")}
export PROJECT_VM_TEST_IMAGE_TRIXIE=${PROJECT_VM_TEST_IMAGE_TRIXIE:-$(cat "$log/trixie.out")}
export PROJECT_VM_CLOUD_INIT_VALIDATORS=${PROJECT_VM_CLOUD_INIT_VALIDATORS:-$(paste -sd: "$log/validators.out")}
echo "test images: $PROJECT_VM_TEST_IMAGE $PROJECT_VM_TEST_IMAGE_TRIXIE"
echo "cloud-init validators: $PROJECT_VM_CLOUD_INIT_VALIDATORS"
echo "virtiofsd: $(cat "$log/virtiofsd.out")"
echo "prepared in $((SECONDS - t0)) s"
# The guest-booting tests run one at a time: each guest wants both cores.
# The default build ignores the hooks' variables (its own unit test):
cargo test --locked --quiet --lib fault:: 2>&1 | tee "$log/default-build.log"
cargo test --locked --no-fail-fast "${features[@]}" -- --include-ignored --test-threads=1 --nocapture 2>&1 | tee "$log/test.log"
grep '^TIMING' "$log/test.log" || true
echo "all tests: $((SECONDS - t0)) s"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log/test.log"
