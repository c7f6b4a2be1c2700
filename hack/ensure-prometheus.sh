#!/usr/bin/env bash
# Makes sure a prometheus server binary is available for the integration and
# end-to-end tests and the local demo: $PROMETHEUS, bin/prometheus or one on
# the PATH; otherwise installs Debian's package (needs root and apt).
set -euo pipefail

if [[ -n "${PROMETHEUS:-}" && -x "${PROMETHEUS}" ]]; then
  exit 0
fi
if [[ -x bin/prometheus ]] || command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "prometheus not found and apt-get is not available: install Prometheus 2.x and put it on the PATH, or set PROMETHEUS=/path/to/prometheus" >&2
  exit 1
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "prometheus not found; installing Debian's package needs root (or sudo)" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo ">> installing Debian's prometheus package (about 20 s)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package may start a system service on a default port; the tests start
# their own servers and never use it.
command -v prometheus >/dev/null
prometheus --version 2>&1 | head -1
