#!/usr/bin/env bash
# The demo on a kind cluster: builds both images, installs Prometheus (which
# scrapes the pods and cAdvisor), the adapter with all three metrics APIs
# (custom, external, and resource metrics in place of metrics-server) and
# the load app, drives load from a pod and shows the HPA scaling the app out
# on packets-per-second and back in.
#
# Needs Docker, kind and kubectl. Idempotent: rerunning reuses the cluster.
#
#   hack/kind-demo.sh                  # or: make kind-demo
#   CLUSTER_NAME=x RATE=300 hack/kind-demo.sh
#   kind delete cluster --name custom-metrics-demo    # when done
set -euo pipefail

CLUSTER_NAME=${CLUSTER_NAME:-custom-metrics-demo}
TAG=${TAG:-dev}
# Load offered by the generator pod (requests/s) and for how long; the HPA
# aims for TARGET requests/s per pod (manifests/hpa/pods says 1k).
RATE=${RATE:-200}
DURATION=${DURATION:-4m}
TARGET=${TARGET:-50}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

log() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: retry COMMAND every 5 s.
wait_for() {
  local what=$1 timeout=$2 start
  shift 2
  start=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) - start >= timeout )); then
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 5
  done
}

log "checking prerequisites"
command -v docker >/dev/null || die "docker is not installed: https://docs.docker.com/get-docker/"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable: start Docker (or check your permissions on its socket)"
command -v kind >/dev/null || die "kind is not installed: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
command -v kubectl >/dev/null || die "kubectl is not installed: https://kubernetes.io/docs/tasks/tools/"
command -v openssl >/dev/null || die "openssl is not installed (hack/gen-serving-cert.sh needs it)"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  log "reusing kind cluster $CLUSTER_NAME"
else
  log "creating kind cluster $CLUSTER_NAME"
  kind create cluster --name "$CLUSTER_NAME" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null

log "building images custom-metrics-adapter/adapter:$TAG and custom-metrics-adapter/app:$TAG"
version=$(git describe --tags --always --dirty 2>/dev/null || echo devel)
docker build -f Dockerfile.adapter --build-arg VERSION="$version" -t "custom-metrics-adapter/adapter:$TAG" .
docker build -f Dockerfile.app --build-arg VERSION="$version" -t "custom-metrics-adapter/app:$TAG" .
kind load docker-image --name "$CLUSTER_NAME" "custom-metrics-adapter/adapter:$TAG" "custom-metrics-adapter/app:$TAG"

if kubectl get apiservice v1beta1.metrics.k8s.io >/dev/null 2>&1 &&
   [[ $(kubectl get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.spec.service.name}') != custom-metrics-apiserver ]]; then
  die "metrics.k8s.io is served by another APIService (metrics-server?): this demo serves it from the adapter; delete it or use a fresh cluster"
fi

log "installing Prometheus (manifests/prometheus)"
kubectl apply -k manifests/prometheus
kubectl -n monitoring rollout status deployment/prometheus --timeout=180s

log "installing the adapter (manifests/adapter, external-metrics, resource-metrics) with a verified serving certificate"
kubectl apply -k manifests/adapter
kubectl apply -k manifests/external-metrics
kubectl apply -k manifests/resource-metrics
hack/gen-serving-cert.sh
kubectl -n custom-metrics rollout status deployment/custom-metrics-apiserver --timeout=180s
for a in v1beta1.custom.metrics.k8s.io v1beta2.custom.metrics.k8s.io v1beta1.external.metrics.k8s.io v1beta1.metrics.k8s.io; do
  kubectl wait --for=condition=Available "apiservice/$a" --timeout=120s
done

log "installing the load app (manifests/app) and the Pods-metric HPA (manifests/hpa/pods, target ${TARGET}/pod)"
kubectl apply -k manifests/app
kubectl rollout status deployment/app --timeout=180s
kubectl apply -k manifests/hpa/pods
kubectl patch hpa app --type=json \
  -p "[{\"op\":\"replace\",\"path\":\"/spec/metrics/0/pods/target/averageValue\",\"value\":\"$TARGET\"}]"

metric_url='/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second?labelSelector=app%3Dapp'
has_values() { kubectl get --raw "$metric_url" | grep -q '"value"'; }
log "waiting for the first values from the adapter (Prometheus scrapes every 15 s)"
wait_for "values in kubectl get --raw $metric_url" 300 has_values
kubectl get --raw "$metric_url"; echo

log "driving ${RATE} req/s at the Service app for ${DURATION} from a pod"
kubectl delete pod loadgen --ignore-not-found --wait=true >/dev/null
kubectl run loadgen --image="custom-metrics-adapter/app:$TAG" --image-pull-policy=IfNotPresent --restart=Never \
  --command -- /loadgen --target=http://app.default.svc --path=/ --rate="$RATE" --duration="$DURATION"

replicas() { kubectl get deployment app -o jsonpath='{.status.readyReplicas}'; }
scaled_out() { (( $(replicas) > 1 )); }
show() { kubectl get hpa app --no-headers; }
start=$(date +%s)
until scaled_out; do
  (( $(date +%s) - start < 300 )) || die "the HPA did not scale out within 5 minutes: kubectl describe hpa app"
  show
  sleep 10
done
log "scaled out after $(( $(date +%s) - start ))s"
until [[ $(kubectl get pod loadgen -o jsonpath='{.status.phase}') =~ ^(Succeeded|Failed)$ ]]; do
  show
  sleep 15
done
kubectl logs loadgen | tail -1

log "load stopped; waiting for the scale-in (rules' 1m window, then the HPA's 1m stabilization)"
start=$(date +%s)
until [[ $(replicas) == 1 ]]; do
  (( $(date +%s) - start < 600 )) || die "the HPA did not scale back to 1 within 10 minutes: kubectl describe hpa app"
  show
  sleep 15
done
show
log "back to 1 replica after $(( $(date +%s) - start ))s"

cat <<MSG

Next:
  kubectl get hpa app -w
  kubectl get --raw "$metric_url"
  kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2/namespaces/default/ingresses.networking.k8s.io/main-route/requests-per-second
  kubectl top pods; kubectl top nodes       # resource metrics, from cAdvisor through Prometheus
  kubectl apply -k manifests/hpa/object     # the Object-metric example (Ingress main-route)
  kubectl apply -k manifests/hpa/external   # the External-metric example (app_requests_per_second)
  kubectl apply -k manifests/hpa/cpu        # the CPU example (resource metrics from this adapter)

Delete the cluster:
  kind delete cluster --name $CLUSTER_NAME
MSG
