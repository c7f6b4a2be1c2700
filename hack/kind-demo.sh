#!/usr/bin/env bash
# The demo on a kind cluster: builds both images and loads them into the
# cluster, installs ingress-nginx (the seed's Object HPA reads main-route's
# traffic from the ingress controller), Prometheus (which scrapes the pods,
# cAdvisor, the adapter and ingress-nginx), the adapter with all three
# metrics APIs and MetricRules (manifests/kind-demo), then runs the demo's
# driver (hack/demo, the same as make demo's on the local stack): the
# seed's five HPAs, the two that scale from zero and the team-owned rule,
# each app loaded by a pod of its own through the ingress controller.
#
# Needs Docker, kind, kubectl and Go. Idempotent: rerunning reuses the
# cluster.
#
#   hack/kind-demo.sh                  # or: make kind-demo
#   CLUSTER_NAME=x DEMO_ARGS=--quick hack/kind-demo.sh
#   kind delete cluster --name custom-metrics-demo    # when done
set -euo pipefail

CLUSTER_NAME=${CLUSTER_NAME:-custom-metrics-demo}
TAG=${TAG:-dev}
# ingress-nginx's kind manifest, pinned.
INGRESS_NGINX_VERSION=${INGRESS_NGINX_VERSION:-v1.12.1}
# More flags of the driver (go run ./hack/demo --help), e.g. --quick.
DEMO_ARGS=${DEMO_ARGS:-}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

log() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

log "checking prerequisites"
command -v docker >/dev/null || die "docker is not installed: https://docs.docker.com/get-docker/"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable: start Docker (or check your permissions on its socket)"
command -v kind >/dev/null || die "kind is not installed: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
command -v kubectl >/dev/null || die "kubectl is not installed: https://kubernetes.io/docs/tasks/tools/"
command -v openssl >/dev/null || die "openssl is not installed (hack/gen-serving-cert.sh needs it)"
command -v go >/dev/null || die "Go is not installed: the demo's driver is go run ./hack/demo (https://go.dev/dl/)"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  log "reusing kind cluster $CLUSTER_NAME"
else
  log "creating kind cluster $CLUSTER_NAME"
  kind create cluster --name "$CLUSTER_NAME" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null
kubeconfig=$(mktemp)
trap 'rm -f "$kubeconfig"' EXIT
kind get kubeconfig --name "$CLUSTER_NAME" > "$kubeconfig"

log "building images custom-metrics-adapter/adapter:$TAG and custom-metrics-adapter/app:$TAG"
version=$(git describe --tags --always --dirty 2>/dev/null || echo devel)
docker build -f Dockerfile.adapter --build-arg VERSION="$version" -t "custom-metrics-adapter/adapter:$TAG" .
docker build -f Dockerfile.app --build-arg VERSION="$version" -t "custom-metrics-adapter/app:$TAG" .
kind load docker-image --name "$CLUSTER_NAME" "custom-metrics-adapter/adapter:$TAG" "custom-metrics-adapter/app:$TAG"

if kubectl get apiservice v1beta1.metrics.k8s.io >/dev/null 2>&1 &&
   [[ $(kubectl get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.spec.service.name}') != custom-metrics-apiserver ]]; then
  die "metrics.k8s.io is served by another APIService (metrics-server?): this demo serves it from the adapter; delete it or use a fresh cluster"
fi

log "installing ingress-nginx $INGRESS_NGINX_VERSION (kind's provider manifest)"
# Its controller runs on the node labelled ingress-ready=true.
kubectl label node "$CLUSTER_NAME-control-plane" ingress-ready=true --overwrite >/dev/null
kubectl apply -f "https://raw.githubusercontent.com/kubernetes/ingress-nginx/controller-$INGRESS_NGINX_VERSION/deploy/static/provider/kind/deploy.yaml"
kubectl -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=180s
# The apps' Ingresses name no class: make nginx the default one.
kubectl annotate ingressclass nginx ingressclass.kubernetes.io/is-default-class=true --overwrite >/dev/null

log "installing Prometheus and the adapter with all three APIs and MetricRules (manifests/kind-demo), with a verified serving certificate"
kubectl apply -k manifests/kind-demo
hack/gen-serving-cert.sh
kubectl -n monitoring rollout status deployment/prometheus --timeout=180s
kubectl -n custom-metrics rollout status deployment/custom-metrics-apiserver --timeout=180s
for a in v1beta1.custom.metrics.k8s.io v1beta2.custom.metrics.k8s.io v1beta1.external.metrics.k8s.io v1beta1.metrics.k8s.io; do
  kubectl wait --for=condition=Available "apiservice/$a" --timeout=120s
done

log "the demo: eight apps and their HPAs, load from a pod each through ingress-nginx (hack/demo)"
# shellcheck disable=SC2086 # DEMO_ARGS is a list of flags
go run ./hack/demo -kubeconfig "$kubeconfig" -image "custom-metrics-adapter/app:$TAG" \
  -ingress-url http://ingress-nginx-controller.ingress-nginx.svc $DEMO_ARGS

cat <<MSG

Next:
  kubectl get hpa -A
  kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta2/namespaces/hpa-pods/pods/*/packets-per-second?labelSelector=app%3Dapp"
  kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2/namespaces/hpa-object/ingresses.networking.k8s.io/main-route/requests-per-second
  kubectl get metricrules -n hpa-team-rule -o yaml
  kubectl top pods -A; kubectl top nodes       # resource metrics, from cAdvisor through Prometheus

Delete the cluster:
  kind delete cluster --name $CLUSTER_NAME
MSG
