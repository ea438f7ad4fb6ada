#!/usr/bin/env bash
# Prints the Debian archive URI this machine's apt sources use for SUITE
# (default: this release's codename), so scripts follow local mirrors and
# snapshots instead of naming an archive host themselves.
set -euo pipefail
suite=${1:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
for f in /etc/apt/sources.list.d/*.sources; do
  [[ -e $f ]] || continue
  uri=$(awk -v s="$suite" '
    /^URIs:/ {u=$2}
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s && u !~ /security/) { print u; exit } }
    /^$/ {u=""}' "$f")
  [[ -n $uri ]] && { echo "$uri"; exit 0; }
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [[ -e $f ]] || continue
  uri=$(awk -v s="$suite" '$1 == "deb" && $3 == s && $2 !~ /security/ {print $2; exit}' "$f")
  [[ -n $uri ]] && { echo "$uri"; exit 0; }
done
echo "apt-mirror.sh: no apt source for suite $suite" >&2
exit 1
