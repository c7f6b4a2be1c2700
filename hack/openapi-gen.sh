#!/usr/bin/env bash
# Generates the OpenAPI definitions of the metrics.k8s.io/v1beta1 types into
# DIR/zz_generated.openapi.go, with openapi-gen from go.mod's tool block.
# `make generate` writes pkg/resourcemetrics/openapi; `make verify-generated`
# and test/repo check that the committed file is what this script writes.
#
# Only metrics/v1beta1 is an input: the types it refers to (meta/v1's
# ObjectMeta, ListMeta, Time, Duration; resource.Quantity) are defined by
# custom-metrics-apiserver's pkg/generated/openapi/core, which the adapter
# always serves (pkg/adapter openAPIConfigs). openapi-gen names a type by its
# model name (io.k8s....) only when the type's package is an input, and by
# its Go import path otherwise, which no getter defines; so the script
# renames those references to the model name the type's OpenAPIModelName()
# returns. pkg/adapter's TestOpenAPIReferencesResolve fails on a reference
# nothing defines.
#
#   hack/openapi-gen.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-pkg/resourcemetrics/openapi}
out=$dir/zz_generated.openapi.go
go tool openapi-gen \
  --output-dir "$dir" \
  --output-pkg github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resourcemetrics/openapi \
  --output-file zz_generated.openapi.go \
  --go-header-file /dev/null \
  --report-filename /dev/null \
  k8s.io/metrics/pkg/apis/metrics/v1beta1

# References by Go import path, such as "k8s.io/apimachinery/pkg/apis/meta/v1.Time".
names=$({ grep -oE '"[a-z0-9.-]+(/[A-Za-z0-9._-]+)+\.[A-Z][A-Za-z0-9_]*"' "$out" || true; } | tr -d '"' | sort -u)
rename=$(mktemp)
trap 'rm -f "$rename"' EXIT
for name in $names; do
  pkg=${name%.*} typ=${name##*.}
  model=$(sed -n "/^func (in $typ) OpenAPIModelName() string {\$/{n;s/^[[:space:]]*return \"\(.*\)\"\$/\1/p;}" \
    "$(go list -f '{{.Dir}}' "$pkg")/zz_generated.model_name.go" 2>/dev/null || true)
  if [ -z "$model" ]; then
    echo "$0: $pkg declares no OpenAPI model name for $typ: add $pkg to openapi-gen's inputs" >&2
    exit 1
  fi
  echo "s|\"${name//./\\.}\"|\"$model\"|g" >>"$rename"
done
sed -f "$rename" "$out" >"$out.tmp"
mv "$out.tmp" "$out"
