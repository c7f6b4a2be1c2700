#!/usr/bin/env bash
# Builds the given bin/ targets that are missing or out of date, one after
# the other, saying which of how many is building and how long the one
# before took: a first build of the servers takes tens of minutes.
#
#   hack/build-tools.sh /path/to/bin/etcd /path/to/bin/prometheus ...
set -euo pipefail

make=${MAKE:-make}
todo=()
for target in "$@"; do
  # make -q: 0 when the target is up to date.
  if ! "$make" --no-print-directory -q "$target" 2>/dev/null; then
    todo+=("$target")
  fi
done
n=${#todo[@]}
[[ $n -eq 0 ]] && exit 0

fmt() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
all=$SECONDS
previous=""
for i in "${!todo[@]}"; do
  target=${todo[$i]}
  name=$(basename "$target")
  if "$make" --no-print-directory -q "$target" 2>/dev/null; then
    # Built with the one before (kube-apiserver and kube-controller-manager
    # are one build).
    echo ">> [$((i + 1))/$n] $name: built with the previous"
    continue
  fi
  echo ">> [$((i + 1))/$n] $name${previous:+ (the previous, $previous)}"
  start=$SECONDS
  "$make" --no-print-directory "$target"
  previous="$name, took $(fmt $((SECONDS - start)))"
done
echo ">> built $n of $# tools in $(fmt $((SECONDS - all)))"
