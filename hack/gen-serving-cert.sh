#!/usr/bin/env bash
# Gives the adapter a serving certificate the aggregator verifies, on clusters
# without cert-manager: makes a CA and a certificate for
# custom-metrics-apiserver.custom-metrics.svc with openssl, stores them in the
# Secret custom-metrics-apiserver-tls, and puts the CA in the caBundle of
# every APIService served by the adapter's Service (custom.metrics.k8s.io,
# and external.metrics.k8s.io and metrics.k8s.io where installed).
#
# Run it after `kubectl apply -k manifests/adapter` (and the optional
# manifests/external-metrics, manifests/resource-metrics): the namespace and
# the APIServices must exist. It is idempotent: an existing Secret is kept
# and only the caBundle is refreshed, unless --renew is given.
#
#   hack/gen-serving-cert.sh [--renew] [--days N]
set -euo pipefail

namespace=custom-metrics
service=custom-metrics-apiserver
secret=custom-metrics-apiserver-tls
days=365
renew=false

while [[ $# -gt 0 ]]; do
  case $1 in
    --renew) renew=true; shift ;;
    --days) days=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

for cmd in kubectl openssl base64; do
  command -v "$cmd" >/dev/null || { echo "$cmd is required" >&2; exit 1; }
done
kubectl get namespace "$namespace" >/dev/null 2>&1 || {
  echo "namespace $namespace not found: run 'kubectl apply -k manifests/adapter' first" >&2
  exit 1
}

if [[ $renew == true ]] || ! kubectl -n "$namespace" get secret "$secret" >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  dns="$service.$namespace.svc"
  echo ">> creating a CA and a serving certificate for $dns ($days days)"
  openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=custom-metrics-adapter-ca" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$dns" -keyout "$tmp/tls.key" -out "$tmp/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:%s.cluster.local,DNS:%s.%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' \
    "$dns" "$dns" "$service" "$namespace" > "$tmp/ext"
  openssl x509 -req -in "$tmp/tls.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days "$days" -extfile "$tmp/ext" -out "$tmp/tls.crt" 2>/dev/null
  kubectl -n "$namespace" create secret generic "$secret" \
    --from-file=tls.crt="$tmp/tls.crt" --from-file=tls.key="$tmp/tls.key" --from-file=ca.crt="$tmp/ca.crt" \
    --dry-run=client -o yaml | kubectl apply -f -
  # Pods read the new certificate on restart.
  kubectl -n "$namespace" rollout restart deployment/"$service" >/dev/null 2>&1 || true
else
  echo ">> keeping the existing Secret $namespace/$secret (use --renew to replace it)"
fi

ca=$(kubectl -n "$namespace" get secret "$secret" -o jsonpath='{.data.ca\.crt}')
if [[ -z $ca ]]; then
  echo "Secret $namespace/$secret has no ca.crt: rerun with --renew" >&2
  exit 1
fi
apiservices=$(kubectl get apiservices -o jsonpath="{range .items[?(@.spec.service.name==\"$service\")]}{.metadata.name}{' '}{.spec.service.namespace}{'\n'}{end}" |
  awk -v ns="$namespace" '$2 == ns {print $1}')
if [[ -z $apiservices ]]; then
  echo "no APIService is served by $namespace/$service: run 'kubectl apply -k manifests/adapter' first" >&2
  exit 1
fi
for a in $apiservices; do
  kubectl patch apiservice "$a" --type=merge -p "{\"spec\":{\"caBundle\":\"$ca\"}}" >/dev/null
  echo ">> caBundle set on APIService $a"
done
