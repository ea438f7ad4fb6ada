#!/usr/bin/env bash
# Benchmark suite: project-vm against a real libvirtd, each row next to a peer
# measured by this script on the same machine (the shell-script way of doing
# the same thing, or libvirt's own floor). Prints the machine, progress on
# stderr, and at the end one markdown table of medians.
#
# Rows:
#   1  create (1 CPU, 1G, 5G root, 2G project disk, seed) vs virsh vol-create-as x2
#      + xorriso seed + vol-create-as/vol-upload + virsh define (as bench-create.sh)
#   2  create + start + destroy vs virsh start + virsh destroy of a defined domain
#   3  list --json at LIST_SIZES VMs vs virsh list --all
#   4  apply of APPLY_SIZES new VMs, re-apply unchanged, and -j sweep (ms per VM)
#   5  (--boot only) time to ready of one booted guest vs a minimal seed polled with ssh
#   6  (--boot only) on one VM in the same run: cold start to a usable shell (stop, then
#      start --wait and ssh) beside suspend, then start to a usable shell (the same
#      start --wait and ssh after a managed save); SUSPEND_RUNS pairs (3), medians, ratio
# and the peak RSS of every project-vm command measured.
#
# Needs root and libvirtd (scripts/setup-host.sh), xorriso, qemu-img; downloads
# nothing: the base image is an empty qcow2 (nothing really boots) except for
# row 5, which uses PROJECT_VM_TEST_IMAGE (tests/images/build-debian.sh).
# Everything it makes (pool pvbench-PID, VMs bench<PID>-*, peer domains
# peer-bench<PID>-*) is removed on exit.
set -euo pipefail
export LC_ALL=C

usage() {
  cat <<'EOF'
usage: scripts/bench.sh [RUNS] [--runs N] [--list-sizes "10 100 500"] [--apply-sizes "20 200"]
                        [--jobs "1 2 4 8"] [--jobs-size N] [--jobs-runs N] [--rows 1,2,3,4,5]
                        [--boot] [--boot-runs N] [--suspend-runs N]
Environment (same meaning): RUNS (5), LIST_SIZES, APPLY_SIZES, JOBS, JOBS_SIZE (largest apply
size), JOBS_RUNS (1), ROWS, BOOT=1, BOOT_RUNS (1), PROJECT_VM_TEST_IMAGE (enables row 5; else
--boot takes /var/cache/project-vm/test-images/debian-bookworm-*.qcow2), BOOT_MEM/BOOT_CPUS/
BOOT_DISK (1G/2/8G), SUSPEND_RUNS (3, row 6), BENCH_SSH_PORT (24000), PROJECT_VM_BIN (the binary to test; else
cargo build --release into ${CARGO_TARGET_DIR:-target}).
EOF
}

runs=${RUNS:-5}
list_sizes=${LIST_SIZES:-10 100 500}
apply_sizes=${APPLY_SIZES:-20 200}
jobs_list=${JOBS:-1 2 4 8}
jobs_size=${JOBS_SIZE:-}
jobs_runs=${JOBS_RUNS:-1}
rows=${ROWS:-1,2,3,4,5,6}
suspend_runs=${SUSPEND_RUNS:-3}
boot=${BOOT:-}
[[ -n ${PROJECT_VM_TEST_IMAGE:-} ]] && boot=1
boot_runs=${BOOT_RUNS:-1}
ssh_port_base=${BENCH_SSH_PORT:-24000}
while (($#)); do
  case $1 in
    --runs) runs=$2; shift ;;
    --list-sizes) list_sizes=$2; shift ;;
    --apply-sizes) apply_sizes=$2; shift ;;
    --jobs) jobs_list=$2; shift ;;
    --jobs-size) jobs_size=$2; shift ;;
    --jobs-runs) jobs_runs=$2; shift ;;
    --rows) rows=$2; shift ;;
    --boot) boot=1 ;;
    --boot-runs) boot_runs=$2; shift ;;
    --suspend-runs) suspend_runs=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    [0-9]*) runs=$1 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
for n in "$runs" "$jobs_runs" "$boot_runs" "$suspend_runs" $list_sizes $apply_sizes $jobs_list $jobs_size; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: not a positive number: $n" >&2; exit 2; }
done
[[ -n $jobs_size ]] || jobs_size=$(printf '%s\n' $apply_sizes | sort -n | tail -1)
row_on() { [[ ,$rows, == *,$1,* ]]; }

t_begin=${EPOCHREALTIME/./}
say() { printf '[bench %4ds] %s\n' $(( (${EPOCHREALTIME/./} - t_begin) / 1000000 )) "$*" >&2; }
die() { echo "bench.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (qemu:///system)"
for tool in virsh qemu-img xorriso ssh-keygen; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup-host.sh installs it)"
done
URI=qemu:///system
V() { virsh -q -c "$URI" "$@"; }
V version >/dev/null 2>&1 || die "libvirtd does not answer on $URI (scripts/setup-host.sh)"

cd "$(dirname "$0")/.."
if [[ -n ${PROJECT_VM_BIN:-} ]]; then
  bin=$(readlink -f "$PROJECT_VM_BIN")
else
  target=${CARGO_TARGET_DIR:-target}
  say "building: CARGO_TARGET_DIR=$target cargo build --release"
  CARGO_TARGET_DIR=$target cargo build --release --quiet
  bin=$(readlink -f "$target/release/project-vm")
fi
[[ -x $bin ]] || die "no binary at $bin"

# --- what we own -------------------------------------------------------------
tag=$$
pfx=bench$tag           # project-vm VM names: bench<PID>-...; domains project-bench<PID>-...
peerpfx=peer-bench$tag  # domains the peer defines with virsh
pool=pvbench-$tag
work=$(mktemp -d /tmp/project-vm-bench.XXXXXX)
chmod 0755 "$work"      # the pool directory must be reachable by the qemu user
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  local doms
  doms=$(virsh -q -c "$URI" list --all --name 2>/dev/null | grep -E "^(project-$pfx-|$peerpfx-)")
  if [[ -n $doms ]]; then
    say "cleanup: removing $(wc -l <<<"$doms") domains of this run"
    for d in $doms; do
      virsh -q -c "$URI" destroy "$d" >/dev/null 2>&1
      virsh -q -c "$URI" undefine "$d" >/dev/null 2>&1
    done
  fi
  virsh -q -c "$URI" pool-destroy "$pool" >/dev/null 2>&1
  virsh -q -c "$URI" pool-undefine "$pool" >/dev/null 2>&1
  rm -rf "$work"
  rm -f /var/log/libvirt/qemu/project-"$pfx"-* /var/log/libvirt/qemu/"$peerpfx"-*
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- measuring -----------------------------------------------------------------
# Peak RSS: GNU time's %M, else python3's wait4, else '-'.
if [[ -x /usr/bin/time ]] && /usr/bin/time -f %M -o /dev/null true 2>/dev/null; then
  rss_mode=time
elif command -v python3 >/dev/null; then
  rss_mode=python
else
  rss_mode=none
fi

# pv ARGS...: project-vm, stdout to $work/out; exits on failure with its stderr.
pv() {
  "$bin" "$@" >"$work/out" 2>"$work/err" || {
    cat "$work/err" >&2
    die "project-vm $* failed"
  }
}
# pvr ARGS...: like pv, and sets RSS_KB to its peak RSS (KiB, or '-').
pvr() {
  local rc=0
  case $rss_mode in
    time) /usr/bin/time -f %M -o "$work/rss" "$bin" "$@" >"$work/out" 2>"$work/err" || rc=$? ;;
    python)
      python3 -c 'import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, st, ru = os.wait4(pid, 0)
open(sys.argv[1], "w").write("%d\n" % ru.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(st))' "$work/rss" "$bin" "$@" >"$work/out" 2>"$work/err" || rc=$? ;;
    none) "$bin" "$@" >"$work/out" 2>"$work/err" || rc=$? ;;
  esac
  if ((rc)); then
    cat "$work/err" >&2
    die "project-vm $* failed (exit $rc)"
  fi
  RSS_KB=-
  [[ $rss_mode == none ]] || RSS_KB=$(tail -n1 "$work/rss")
}
# Keeps the largest RSS seen in the variable named $1.
maxrss() {
  local -n m=$1
  [[ $RSS_KB == - ]] && return
  if [[ -z ${m:-} || $m == - ]] || ((RSS_KB > m)); then m=$RSS_KB; fi
}
tick() { T0=${EPOCHREALTIME/./}; }
tock() { T=$(( ${EPOCHREALTIME/./} - T0 )); }  # T: microseconds since tick
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
med() { printf '%s\n' "$@" | median; }
# Formatting: microseconds as ms; KiB as MiB.
fms() { awk -v u="$1" 'BEGIN { m = u / 1000; a = m < 0 ? -m : m; if (a >= 100) printf "%.0f ms", m; else if (a >= 10) printf "%.1f ms", m; else printf "%.2f ms", m }'; }
# The runs, in ms, for the progress lines; and their range.
runs_ms() { local u out=; for u in "$@"; do out+=" $(awk -v u="$u" 'BEGIN { printf "%.1f", u / 1000 }')"; done; echo "${out# }"; }
range_ms() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f-%.0f ms", lo / 1000, hi / 1000}'; }
fmib() { [[ $1 == - || -z $1 ]] && { echo -; return; }; awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# --- setting up ----------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -C "$pfx" -f "$work/key"
pubkey=$(cat "$work/key.pub")
cat >"$work/config.json" <<JSON
{"storage_dir": "$work/pool", "pool": "$pool", "accel": "tcg", "base_image": "base",
 "network": {"type": "user", "ssh_port": $ssh_port_base}, "ssh_authorized_keys": ["$pubkey"]}
JSON
export PROJECT_VM_CONFIG=$work/config.json PROJECT_VM_URI=$URI
export PROJECT_VM_SSH_IDENTITY=$work/key XDG_STATE_HOME=$work/state
unset PROJECT_VM_FILE

cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_gib=$(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
libvirt_v=$(V version | awk -F': *' '/^Using library/ {print $2}')
qemu_v=$(V version | awk -F': *' '/^Running hypervisor/ {print $2}')
machine="$(nproc) CPUs ($cpu_model), ${mem_gib} GiB RAM, $libvirt_v, $qemu_v, kernel $(uname -r), guests under TCG"
pv_version=$("$bin" --version)
echo "machine:    $machine"
echo "project-vm: $pv_version ($bin)"
echo "runs:       $runs per row (medians); list at: $list_sizes VMs; apply of: $apply_sizes VMs;" \
  "-j sweep: $jobs_list at $jobs_size VMs, $jobs_runs run(s) each;" \
  "boot row: $([[ -n $boot ]] && echo "on, $boot_runs run(s)" || echo "off (--boot)")"
echo "peak RSS:   $([[ $rss_mode == time ]] && echo "GNU time %M" || { [[ $rss_mode == python ]] && echo "python3 wait4 ru_maxrss" || echo "not measured (no GNU time, no python3)"; })"
other_doms=$(V list --all --name | grep -c . || true)
echo "domains already on $URI (not ours, never touched): $other_doms"

qemu-img create -q -f qcow2 "$work/base.qcow2" 1G
pv image import "$work/base.qcow2" --name base
base_vol=$(V vol-list "$pool" | awk '$1 ~ /^base@.*\.img$/ {print $1}')
base_path=$(V vol-path --pool "$pool" "$base_vol")

TABLE=()
row() { TABLE+=("| $1 | $2 | $3 | $4 | $5 | $6 |"); }

# The peer: the same objects the way shell-script tools make them.
# peer_xml NAME MEM_MIB CPUS PORT: a domain like project-vm's (two virtio disks,
# the seed as a CD-ROM on virtio-scsi (cloud kernels may lack AHCI), user
# networking through passt with a port forward).
peer_xml() {
  local n=$1 mem=$2 cpus=$3 port=$4
  cat <<XML
<domain type='qemu'><name>$n</name><memory unit='MiB'>$mem</memory><vcpu>$cpus</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os><features><acpi/><apic/></features>
<devices>
<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='$pool' volume='$n-root.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='$pool' volume='$n-data.qcow2'/><target dev='vdb' bus='virtio'/><serial>project-data</serial></disk>
<disk type='volume' device='cdrom'><driver name='qemu' type='raw'/><source pool='$pool' volume='$n-seed.iso'/><target dev='sda' bus='scsi'/><readonly/></disk>
<controller type='scsi' model='virtio-scsi'/>
<interface type='user'><backend type='passt'/><model type='virtio'/>
<portForward proto='tcp' address='127.0.0.1'><range start='$port' to='22'/></portForward></interface>
<serial type='pty'><log file='/var/log/libvirt/qemu/$n-serial.log' append='on'/></serial><console type='pty'/>
<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
</devices></domain>
XML
}
# peer_create NAME BACKING_PATH ROOT DATA MEM_MIB CPUS PORT USER_DATA_FILE
peer_create() {
  local n=$1 backing=$2 root=$3 data=$4 mem=$5 cpus=$6 port=$7 ud=$8 d=$work/seed-$1
  V vol-create-as "$pool" "$n-root.qcow2" "$root" --format qcow2 --backing-vol "$backing" --backing-vol-format qcow2 >/dev/null
  V vol-create-as "$pool" "$n-data.qcow2" "$data" --format qcow2 >/dev/null
  mkdir -p "$d"
  cp "$ud" "$d/user-data"
  printf 'instance-id: %s\nlocal-hostname: %s\n' "$n" "$n" >"$d/meta-data"
  xorriso -as mkisofs -quiet -V cidata -J -r -o "$d.iso" "$d" 2>/dev/null
  V vol-create-as "$pool" "$n-seed.iso" "$(stat -c %s "$d.iso")" --format raw >/dev/null
  V vol-upload --pool "$pool" "$n-seed.iso" "$d.iso"
  peer_xml "$n" "$mem" "$cpus" "$port" >"$work/$n.xml"
  V define "$work/$n.xml" >/dev/null
}
peer_delete() {
  local n=$1
  V destroy "$n" >/dev/null 2>&1 || true
  V undefine "$n" >/dev/null
  for v in root.qcow2 data.qcow2 seed.iso; do V vol-delete --pool "$pool" "$n-$v" >/dev/null; done
  rm -rf "$work/seed-$n" "$work/seed-$n.iso" "$work/$n.xml"
}
peer_user_data() {
  printf '#cloud-config\nhostname: %s\nusers:\n  - name: dev\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n    ssh_authorized_keys: ["%s"]\n' "$1" "$pubkey"
}

# apply_file FILE N PREFIX: the declarative file of N VMs PREFIX0001...
apply_file() {
  local f=$1 n=$2 p=$3 i sep=
  {
    printf '{"defaults": {"memory": "256M", "cpus": 1, "disk": "2G", "project_disk": "1G"}, "vms": {'
    for ((i = 1; i <= n; i++)); do printf '%s"%s%04d": {}' "$sep" "$p" "$i"; sep=', '; done
    printf '}}\n'
  } >"$f"
}
echo '{"vms": {}}' >"$work/empty.json"
apply_ok() { grep -Eq '"failed": *0([^0-9]|$)' "$work/out" || { cat "$work/out" "$work/err" >&2; die "apply reported failures"; }; }
# CPU time (µs) used so far by the system libvirtd and the children it
# reaped (qemu-img): what an apply costs the daemon, whatever our CLI does.
daemon_cpu_us() {
  local pid
  pid=$(cat /run/libvirtd.pid 2>/dev/null || pgrep -u root -x libvirtd | head -1)
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15 + $16 + $17) * 1000000 / hz }' "/proc/$pid/stat"
}
prune_all() { pv apply -f "$work/empty.json" --prune --delete-data --json; apply_ok; }

# --- 1. create -----------------------------------------------------------------
peer_create_us=
if row_on 1 || row_on 4; then
  say "row 1: create vs virsh+xorriso, 1 warm-up + $runs runs each"
  ours=() peer=() rss1=
  peer_user_data "$peerpfx" >"$work/ud-min"
  for i in $(seq 0 "$runs"); do
    n=$pfx-c$i
    tick
    pvr create "$n" 1G 1 5G --project-disk 2G
    tock; t=$T
    maxrss rss1
    ((i == 0)) || ours+=("$t")
    pv destroy "$n"

    n=$peerpfx-c$i
    tick
    peer_create "$n" "$base_path" 5G 2G 1024 1 $((ssh_port_base + 900)) "$work/ud-min"
    tock; t=$T
    ((i == 0)) || peer+=("$t")
    peer_delete "$n"
  done
  m_ours=$(med "${ours[@]}") m_peer=$(med "${peer[@]}")
  peer_create_us=$m_peer
  say "  project-vm: $(fms "$m_ours") (runs: $(runs_ms "${ours[@]}"))  peer: $(fms "$m_peer") (runs: $(runs_ms "${peer[@]}"))"
  row "create (1 CPU, 1G, 5G root, 2G project disk, seed)" "$(fms "$m_ours")" \
    "virsh vol-create-as ×2, xorriso seed, vol-create-as + vol-upload, define" "$(fms "$m_peer")" \
    "peer/ours $(ratio "$m_peer" "$m_ours")" "$(fmib "$rss1")"
fi

# --- 2. create + start + destroy vs the libvirt floor ------------------------------
if row_on 2; then
  say "row 2: create+start+destroy vs virsh start+destroy, 1 warm-up + $runs runs each"
  ours=() peer=() rss2=
  for i in $(seq 0 "$runs"); do
    n=$pfx-s$i
    tick
    pvr create "$n" 1G 1 5G --project-disk 2G --start
    maxrss rss2
    pvr destroy "$n"
    tock; t=$T
    maxrss rss2
    ((i == 0)) || ours+=("$t")

    n=$pfx-f$i
    pv create "$n" 1G 1 5G --project-disk 2G
    tick
    V start "project-$n" >/dev/null
    V destroy "project-$n" >/dev/null
    tock; t=$T
    ((i == 0)) || peer+=("$t")
    pv destroy "$n"
  done
  m_ours=$(med "${ours[@]}") m_peer=$(med "${peer[@]}")
  say "  project-vm: $(fms "$m_ours") (runs: $(runs_ms "${ours[@]}"))  floor: $(fms "$m_peer") (runs: $(runs_ms "${peer[@]}"))"
  row "create + start + destroy (no boot wait)" "$(fms "$m_ours")" \
    "libvirt floor: virsh start + virsh destroy of the same kind of defined domain" "$(fms "$m_peer")" \
    "overhead $(fms "$(awk -v a="$m_ours" -v b="$m_peer" 'BEGIN { print a - b }')" | sed 's/^\([0-9]\)/+\1/') (runs: ours $(range_ms "${ours[@]}"), floor $(range_ms "${peer[@]}"))" "$(fmib "$rss2")"
fi

# --- 3. list -------------------------------------------------------------------------
if row_on 3; then
  have=0
  for size in $(printf '%s\n' $list_sizes | sort -n); do
    if ((size > have)); then
      say "row 3: apply to reach $size VMs"
      apply_file "$work/list.json" "$size" "$pfx-l"
      pv apply -f "$work/list.json" --json
      apply_ok
      have=$size
    fi
    total=$(V list --all --name | grep -c .)
    say "row 3: list at $size VMs ($total domains on the connection), 1 warm-up + $runs runs each"
    ours=() peer=() rss3=
    for i in $(seq 0 "$runs"); do
      tick
      pvr list --json
      tock; t=$T
      maxrss rss3
      ((i == 0)) || ours+=("$t")
      n_listed=$(grep -c '"domain":' "$work/out" || true)
      ((n_listed == size)) || die "list --json shows $n_listed VMs, expected $size"
      tick
      V list --all >/dev/null
      tock; t=$T
      ((i == 0)) || peer+=("$t")
    done
    m_ours=$(med "${ours[@]}") m_peer=$(med "${peer[@]}")
    say "  project-vm: $(fms "$m_ours") (runs: $(runs_ms "${ours[@]}"))  virsh: $(fms "$m_peer") (runs: $(runs_ms "${peer[@]}"))"
    row "list --json, $size VMs ($total domains on the connection)" "$(fms "$m_ours")" \
      "virsh list --all (same domains)" "$(fms "$m_peer")" "ours/virsh $(ratio "$m_ours" "$m_peer")" "$(fmib "$rss3")"
  done
  say "row 3: removing the $have VMs"
  prune_all
fi

# --- 4. apply --------------------------------------------------------------------------
if row_on 4; then
  peer_vm=- peer_cell=-
  if [[ -n $peer_create_us ]]; then peer_vm=$(fms "$peer_create_us"); fi
  for size in $apply_sizes; do
    say "row 4: apply of $size new VMs, re-apply unchanged, prune; $runs runs"
    apply_file "$work/apply.json" "$size" "$pfx-a"
    new=() again=() rss_new= rss_again=
    for i in $(seq "$runs"); do
      tick
      pvr apply -f "$work/apply.json" --json
      tock; t=$T
      apply_ok
      grep -Eq "\"changes\": *$size([^0-9]|$)" "$work/out" || die "apply of $size did not report $size changes"
      maxrss rss_new
      new+=($((t / size)))
      tick
      pvr apply -f "$work/apply.json" --json
      tock; t=$T
      apply_ok
      grep -Eq '"changes": *0([^0-9]|$)' "$work/out" || die "re-apply of an unchanged file changed something"
      maxrss rss_again
      again+=($((t / size)))
      prune_all
    done
    m_new=$(med "${new[@]}") m_again=$(med "${again[@]}")
    say "  new: $(fms "$m_new")/VM  unchanged: $(fms "$m_again")/VM"
    cmp=-
    [[ -n $peer_create_us ]] && cmp="peer/ours $(ratio "$peer_create_us" "$m_new")"
    row "apply, $size new VMs (-j 4, default), per VM" "$(fms "$m_new")" \
      "row 1's peer, per VM (one VM at a time)" "$peer_vm" "$cmp" "$(fmib "$rss_new")"
    row "apply again, $size VMs unchanged, per VM" "$(fms "$m_again")" "-" "-" "-" "$(fmib "$rss_again")"
  done
  apply_file "$work/jobs.json" "$jobs_size" "$pfx-j"
  for j in $jobs_list; do
    say "row 4: apply of $jobs_size new VMs with -j $j, $jobs_runs run(s)"
    per=() rss_j= dcpu=()
    for i in $(seq "$jobs_runs"); do
      c0=$(daemon_cpu_us)
      tick
      pvr apply -f "$work/jobs.json" --json -j "$j"
      tock; t=$T
      dcpu+=($(( ($(daemon_cpu_us) - c0) / jobs_size )))
      apply_ok
      maxrss rss_j
      per+=($((t / jobs_size)))
      prune_all
    done
    m=$(med "${per[@]}") md=$(med "${dcpu[@]}")
    say "  -j $j: $(fms "$m")/VM, libvirtd and its children: $(fms "$md") of CPU per VM"
    cmp="libvirtd CPU $(fms "$md")/VM"
    [[ -n $peer_create_us ]] && cmp="peer/ours $(ratio "$peer_create_us" "$m"); $cmp"
    row "apply, $jobs_size new VMs, -j $j, per VM ($jobs_runs run$( ((jobs_runs > 1)) && echo "s, median" || true))" "$(fms "$m")" \
      "row 1's peer, per VM" "$peer_vm" "$cmp" "$(fmib "$rss_j")"
  done
fi

# --- 5. time to ready of a booted guest ----------------------------------------------------
if row_on 5 && [[ -n $boot ]]; then
  img=${PROJECT_VM_TEST_IMAGE:-}
  if [[ -z $img ]]; then
    img=$(ls -t /var/cache/project-vm/test-images/debian-bookworm-*.qcow2 2>/dev/null | head -1 || true)
  fi
  [[ -n $img && -f $img ]] || die "--boot needs a guest image: set PROJECT_VM_TEST_IMAGE (tests/images/build-debian.sh bookworm)"
  command -v ssh >/dev/null || die "ssh is missing"
  boot_mem=${BOOT_MEM:-1G} boot_cpus=${BOOT_CPUS:-2} boot_disk=${BOOT_DISK:-8G}
  say "row 5: importing $img"
  pv image import "$img" --name bootimg
  boot_vol=$(V vol-list "$pool" | awk '$1 ~ /^bootimg@.*\.img$/ {print $1}')
  boot_path=$(V vol-path --pool "$pool" "$boot_vol")
  ssh_opts=(-i "$work/key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5)
  ours_wall=() ours_boot=() ours_lat=() peer_wall=() peer_boot=() peer_ci=() rss5=
  for i in $(seq "$boot_runs"); do
    n=$pfx-boot$i
    say "row 5: run $i: project-vm create --start --wait (guest boots under TCG, 1-2 minutes)"
    tick
    pvr create "$n" "$boot_mem" "$boot_cpus" "$boot_disk" --project-disk 2G --image bootimg --start --wait --timeout 900 --json
    tock; t=$T
    maxrss rss5
    grep -Eq '"result": *"done"' "$work/out" || { cat "$work/out" >&2; die "the guest did not report done"; }
    created_ms=$(grep -Eo '"elapsed_ms": *[0-9]+' "$work/out" | head -1 | grep -Eo '[0-9]+$')
    waited=$(grep -Eo '"waited_s": *[0-9.eE+-]+' "$work/out" | grep -Eo '[0-9.eE+-]+$')
    lat=$(grep -Eo '"report_latency_s": *[0-9.eE+-]+' "$work/out" | grep -Eo '[0-9.eE+-]+$' || echo nan)
    ours_wall+=("$t")
    ours_boot+=($((t - created_ms * 1000)))
    ours_lat+=("$lat")
    say "  ready after $(awk -v u="$t" 'BEGIN { printf "%.1f", u / 1e6 }') s (create ${created_ms} ms, waited ${waited} s, cloud-init finished -> reported ${lat} s)"
    pv ssh "$n" -- true
    pv destroy "$n"

    n=$peerpfx-boot$i
    port=$((ssh_port_base + 950))
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    peer_user_data "$n" >"$work/ud-boot"
    mem_mib=$(awk -v s="$boot_mem" 'BEGIN { u = substr(s, length(s)); v = substr(s, 1, length(s) - 1); print (u == "G") ? v * 1024 : (u == "M") ? v : s }')
    say "row 5: run $i: peer: minimal seed, virsh define + start, ssh polled every second"
    tick
    peer_create "$n" "$boot_path" "$boot_disk" 2G "$mem_mib" "$boot_cpus" "$port" "$work/ud-boot"
    tock; t_def=$T
    V start "$n" >/dev/null
    deadline=$((SECONDS + 900))
    until ssh "${ssh_opts[@]}" -p "$port" dev@127.0.0.1 true 2>/dev/null; do
      ((SECONDS < deadline)) || { tail -40 "/var/log/libvirt/qemu/$n-serial.log" >&2; die "peer guest: no ssh after 900 s"; }
      if grep -q 'DataSourceNone' "/var/log/libvirt/qemu/$n-serial.log" 2>/dev/null; then
        tail -40 "/var/log/libvirt/qemu/$n-serial.log" >&2
        die "peer guest: cloud-init did not find the seed"
      fi
      sleep 1
    done
    tock; t=$T
    peer_wall+=("$t")
    peer_boot+=($((t - t_def)))
    ssh "${ssh_opts[@]}" -p "$port" dev@127.0.0.1 cloud-init status --wait >/dev/null 2>&1 || true
    tock; t_ci=$T
    peer_ci+=($((t_ci - t_def)))
    say "  ssh answered after $(awk -v u="$t" 'BEGIN { printf "%.1f", u / 1e6 }') s; cloud-init done (seen over ssh) $(awk -v u="$((t_ci - t_def))" 'BEGIN { printf "%.1f", u / 1e6 }') s after start"
    peer_delete "$n"
  done
  fs() { awk -v u="$1" 'BEGIN { printf "%.1f s", u / 1e6 }'; }
  m_ow=$(med "${ours_wall[@]}") m_ob=$(med "${ours_boot[@]}") m_pw=$(med "${peer_wall[@]}") m_pb=$(med "${peer_boot[@]}") m_pc=$(med "${peer_ci[@]}")
  m_lat=$(med "${ours_lat[@]}")
  runs_note="$boot_runs run$( ((boot_runs > 1)) && echo "s, median" || true)"
  row "time to ready, one booted guest ($boot_mem, $boot_cpus CPUs, TCG; $runs_note): create --start --wait" \
    "$(fs "$m_ow") wall, $(fs "$m_ob") start to ready" \
    "virsh-defined domain, minimal seed, passt port forward, \`ssh true\` every 1 s until it answers" \
    "$(fs "$m_pw") wall, $(fs "$m_pb") start to ssh" \
    "project-vm's guest-side overhead $(awk -v a="$m_ob" -v b="$m_pb" 'BEGIN { printf "%+.1f s", (a - b) / 1e6 }') (it waits for cloud-init to finish, the peer only for sshd)" "$(fmib "$rss5")"
  row "start to cloud-init done (what --wait waits for)" \
    "$(fs "$m_ob"), host told $(awk -v s="$m_lat" 'BEGIN { printf "%.2f s", s }') after cloud-init finished" \
    "same peer guest, then \`ssh … cloud-init status --wait\`" "$(fs "$m_pc")" \
    "project-vm $(awk -v a="$m_ob" -v b="$m_pc" 'BEGIN { printf "%+.1f s", (a - b) / 1e6 }') vs the peer's cloud-init done" "-"
fi

# --- 6. suspend and resume vs a cold start, on the same VM --------------------------------
if row_on 6 && [[ -n $boot ]]; then
  img=${PROJECT_VM_TEST_IMAGE:-}
  if [[ -z $img ]]; then
    img=$(ls -t /var/cache/project-vm/test-images/debian-bookworm-*.qcow2 2>/dev/null | head -1 || true)
  fi
  [[ -n $img && -f $img ]] || die "--boot needs a guest image: set PROJECT_VM_TEST_IMAGE (tests/images/build-debian.sh bookworm)"
  boot_mem=${BOOT_MEM:-1G} boot_cpus=${BOOT_CPUS:-2} boot_disk=${BOOT_DISK:-8G}
  V vol-list "$pool" | awk '$1 ~ /^bootimg@.*\.img$/ {found=1} END {exit !found}' || pv image import "$img" --name bootimg
  n=$pfx-sus
  say "row 6: creating $n and its first boot (provisioning, not measured)"
  pv create "$n" "$boot_mem" "$boot_cpus" "$boot_disk" --project-disk 2G --image bootimg --start --wait --timeout 900 --json
  grep -Eq '"result": *"done"' "$work/out" || { cat "$work/out" >&2; die "the guest did not report done"; }
  # shell N: start --wait, then ssh until a shell answers; T: microseconds since tick.
  shell() {
    pv start "$1" --wait --timeout 900 --json
    local deadline=$((SECONDS + 300))
    until "$bin" ssh "$1" -- true >/dev/null 2>&1; do
      ((SECONDS < deadline)) || die "$1: no shell 300 s after start --wait"
      sleep 0.2
    done
    tock
  }
  cold=() warm=() saves=()
  for i in $(seq "$suspend_runs"); do
    pv stop "$n" --timeout 120
    say "row 6: run $i: cold start to a usable shell (a later boot under TCG)"
    tick
    shell "$n"
    cold+=("$T")
    boot_a=$("$bin" ssh "$n" -- cat /proc/sys/kernel/random/boot_id)
    tick
    pv suspend "$n" --json
    tock
    saves+=("$T")
    say "row 6: run $i: suspended in $(fms "$T"); start to a usable shell"
    tick
    shell "$n"
    warm+=("$T")
    boot_b=$("$bin" ssh "$n" -- cat /proc/sys/kernel/random/boot_id)
    [[ $boot_a == "$boot_b" ]] || die "$n booted afresh instead of resuming ($boot_a, then $boot_b)"
    say "  cold $(fms "${cold[-1]}"), resumed $(fms "${warm[-1]}") (the same boot)"
  done
  pv destroy "$n"
  m_cold=$(med "${cold[@]}") m_warm=$(med "${warm[@]}") m_save=$(med "${saves[@]}")
  note="$boot_mem, $boot_cpus CPUs, TCG; $suspend_runs runs, medians; the same VM"
  row "suspend, then start to a usable shell ($note)" "$(fms "$m_warm") (suspend itself $(fms "$m_save"))" \
    "cold start to a usable shell: stop, then start --wait and ssh" "$(fms "$m_cold")" \
    "resumed $(ratio "$m_cold" "$m_warm")x sooner (runs: resumed $(range_ms "${warm[@]}"), cold $(range_ms "${cold[@]}"))" "-"
fi

# --- the table -----------------------------------------------------------------------------
say "done in $(( (${EPOCHREALTIME/./} - t_begin) / 1000000 )) s"
echo
echo "Machine: $machine; $pv_version. Medians of $runs runs (after 1 warm-up run for rows 1-3); peak RSS is the largest over the runs."
echo
echo "| benchmark | project-vm | peer | peer time | comparison | project-vm peak RSS |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${TABLE[@]}"
