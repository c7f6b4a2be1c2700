#!/usr/bin/env bash
# Generates the OpenAPI definitions the resource metrics API needs
# (metrics.k8s.io/v1beta1 and the apimachinery types it refers to) into
# DIR/zz_generated.openapi.go, with openapi-gen from go.mod's tool block.
# `make generate` writes pkg/resourcemetrics/openapi; test/repo checks that
# the committed file is what this script writes.
#
#   hack/openapi-gen.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-pkg/resourcemetrics/openapi}
pkgs=(k8s.io/metrics/pkg/apis/metrics/v1beta1 k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/api/resource)
readonly_flags=()
for p in "${pkgs[@]}"; do readonly_flags+=(--readonly-pkg "$p"); done
go tool openapi-gen \
  --output-dir "$dir" \
  --output-pkg github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resourcemetrics/openapi \
  --output-file zz_generated.openapi.go \
  --go-header-file /dev/null \
  --report-filename /dev/null \
  "${readonly_flags[@]}" "${pkgs[@]}"
