#!/usr/bin/env bash
# Builds the project's commands the one way they are built everywhere:
# `make build`, Dockerfile.adapter and Dockerfile.app all run this script,
# so the binaries the tests run are built like the ones the images ship.
#
#   hack/build.sh OUT_DIR PACKAGE...     e.g. hack/build.sh bin ./cmd/adapter ./app
#   VERSION=v1.2.3 hack/build.sh ...     stamps the version (default: devel)
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 OUT_DIR PACKAGE..." >&2
  exit 2
fi
out=$1
shift
version=${VERSION:-devel}
module=github.com/custom-metrics-adapter/custom-metrics-adapter
mkdir -p "$out"
CGO_ENABLED=0 GOFLAGS=-trimpath go build \
  -ldflags "-s -w -X ${module}/pkg/version.version=${version}" \
  -o "$out/" "$@"
