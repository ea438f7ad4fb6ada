#!/usr/bin/env bash
# Benchmark: how long `project-vm create` takes against a real libvirtd, next
# to a peer run that makes the same things the way shell-script tools do
# (virsh vol-create-as for the overlay and the project disk, xorriso for the
# seed, virsh vol-upload, virsh define). Prints medians and the ratio.
# Needs root and libvirtd (scripts/setup-host.sh). Usage: bench-create.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-15}
cargo build --release --quiet
bin=$PWD/target/release/project-vm
work=$(mktemp -d /tmp/project-vm-bench.XXXXXX)
pool=pvbench-$$
chmod 0755 "$work"
cleanup() {
  set +e
  for d in $(virsh list --all --name | grep '^project-bench'); do virsh undefine "$d" >/dev/null; done
  virsh pool-destroy "$pool" >/dev/null 2>&1; virsh pool-undefine "$pool" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
cat >"$work/config.json" <<JSON
{"storage_dir": "$work/pool", "pool": "$pool", "accel": "tcg", "base_image": "base.qcow2",
 "network": {"type": "user", "ssh_port": 23000}, "ssh_authorized_keys": ["$(cat "$work/key.pub")"]}
JSON
export PROJECT_VM_CONFIG=$work/config.json PROJECT_VM_URI=qemu:///system
qemu-img create -q -f qcow2 "$work/base.qcow2" 2G
"$bin" image import "$work/base.qcow2" >/dev/null

ms() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

ours=()
for i in $(seq "$runs"); do
  t0=$(ms)
  "$bin" create "bench$i" 1G 1 5G --project-disk 2G >/dev/null
  ours+=($(( ($(ms) - t0) / 1000000 )))
  "$bin" destroy "bench$i" >/dev/null
done

base_path=$(virsh vol-path --pool "$pool" base.qcow2)
peer=()
for i in $(seq "$runs"); do
  n=project-peer$i
  t0=$(ms)
  virsh -q vol-create-as "$pool" "$n-root.qcow2" 5G --format qcow2 --backing-vol "$base_path" --backing-vol-format qcow2 >/dev/null
  virsh -q vol-create-as "$pool" "$n-data.qcow2" 2G --format qcow2 >/dev/null
  mkdir -p "$work/seed$i"
  printf '#cloud-config\nhostname: %s\n' "$n" >"$work/seed$i/user-data"
  printf 'instance-id: %s\n' "$n" >"$work/seed$i/meta-data"
  xorriso -as mkisofs -quiet -V cidata -J -r -o "$work/seed$i.iso" "$work/seed$i" 2>/dev/null
  virsh -q vol-create-as "$pool" "$n-seed.iso" "$(stat -c %s "$work/seed$i.iso")" --format raw >/dev/null
  virsh -q vol-upload --pool "$pool" "$n-seed.iso" "$work/seed$i.iso"
  cat >"$work/$n.xml" <<XML
<domain type='qemu'><name>$n</name><memory unit='MiB'>1024</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='$pool' volume='$n-root.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='$pool' volume='$n-data.qcow2'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>
XML
  virsh -q define "$work/$n.xml" >/dev/null
  peer+=($(( ($(ms) - t0) / 1000000 )))
  virsh -q undefine "$n" >/dev/null
  for v in root.qcow2 data.qcow2 seed.iso; do virsh -q vol-delete --pool "$pool" "$n-$v" >/dev/null; done
done

m_ours=$(printf '%s\n' "${ours[@]}" | median)
m_peer=$(printf '%s\n' "${peer[@]}" | median)
echo "create (1G, 1 CPU, 5G root, 2G project disk, seed), $runs runs each, whole command wall time:"
echo "  project-vm create:               median ${m_ours} ms   (runs: ${ours[*]})"
echo "  virsh + xorriso equivalent:       median ${m_peer} ms   (runs: ${peer[*]})"
awk -v a="$m_ours" -v b="$m_peer" 'BEGIN { printf "  ratio project-vm / peer:          %.2f\n", a / b }'
