#!/usr/bin/env bash
# Gives the adapter its forwarding certificate (--upstreams): makes a CA of
# its own and a client certificate it signs with openssl, stores the
# certificate and its key in the Secret custom-metrics-adapter-forwarding
# (namespace custom-metrics) for the adapter, and the CA alone in the
# ConfigMap custom-metrics-adapter-forwarding-ca of each upstream's namespace,
# for the upstream's --requestheader-client-ca-file.
#
# The CA is new and trusted by nothing else: the API server never accepts the
# certificate, and an upstream gets nothing it can replay (a client
# certificate proves itself only with its key, which stays in the Secret).
# See docs/install.md, "Share the APIService", and docs/operations.md,
# "Security model".
#
#   hack/gen-forwarding-cert.sh [--renew] [--days N] [--cn NAME] UPSTREAM_NAMESPACE...
set -euo pipefail

namespace=custom-metrics
secret=custom-metrics-adapter-forwarding
configmap=custom-metrics-adapter-forwarding-ca
cn=custom-metrics-adapter-forwarding
days=365
renew=false
upstreams=()

while [[ $# -gt 0 ]]; do
  case $1 in
    --renew) renew=true; shift ;;
    --days) days=$2; shift 2 ;;
    --cn) cn=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "unknown argument: $1" >&2; exit 2 ;;
    *) upstreams+=("$1"); shift ;;
  esac
done
if [[ ${#upstreams[@]} -eq 0 ]]; then
  echo "name the namespace of each upstream (e.g. monitoring for prometheus-adapter)" >&2
  exit 2
fi

for cmd in kubectl openssl; do
  command -v "$cmd" >/dev/null || { echo "$cmd is required" >&2; exit 1; }
done
kubectl get namespace "$namespace" >/dev/null 2>&1 || {
  echo "namespace $namespace not found: run 'kubectl apply -k manifests/adapter' first" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ $renew == true ]] || ! kubectl -n "$namespace" get secret "$secret" >/dev/null 2>&1; then
  echo ">> creating a forwarding CA and a client certificate for $cn ($days days)"
  openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=custom-metrics-adapter-forwarding-ca" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$tmp/tls.key" -out "$tmp/tls.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' > "$tmp/ext"
  openssl x509 -req -in "$tmp/tls.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days "$days" -extfile "$tmp/ext" -out "$tmp/tls.crt" 2>/dev/null
  # The CA's key is not kept: a renewal makes a new CA.
  kubectl -n "$namespace" create secret generic "$secret" \
    --from-file=tls.crt="$tmp/tls.crt" --from-file=tls.key="$tmp/tls.key" --from-file=ca.crt="$tmp/ca.crt" \
    --dry-run=client -o yaml | kubectl apply -f -
else
  echo ">> keeping the existing Secret $namespace/$secret (use --renew to replace it)"
fi

kubectl -n "$namespace" get secret "$secret" -o jsonpath='{.data.ca\.crt}' | base64 -d > "$tmp/ca.crt"
for ns in "${upstreams[@]}"; do
  kubectl -n "$ns" create configmap "$configmap" --from-file=ca.crt="$tmp/ca.crt" \
    --dry-run=client -o yaml | kubectl apply -f -
  echo ">> CA in ConfigMap $ns/$configmap: mount it in the upstream and add"
  echo "     --requestheader-client-ca-file=<mount>/ca.crt --requestheader-allowed-names=$cn"
done
