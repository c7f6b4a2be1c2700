# custom-metrics-adapter
#
#   make demo    the local demo: a real control plane, Prometheus, the adapter
#                and the load app on 127.0.0.1; the HPA scales out and back
#   make test    every test, one suite after the other: verify (gofmt, lint,
#                generated code, logcheck, go mod tidy), repo (manifests,
#                chart, shellcheck, Dockerfiles), unit (race), integration,
#                end-to-end, faults
#   make unit    the fast loop
#
# One set of build flags everywhere (CGO off, -trimpath) keeps the build cache
# warm; only the race-detector run of the unit tests needs cgo.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

export CGO_ENABLED := 0
export GOFLAGS := -trimpath
# Tests that need the local stack's servers fail, rather than skip, when
# they are missing (a plain `go test ./...` skips them).
export LOCALSTACK_REQUIRED := 1

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
BIN     := $(CURDIR)/bin

# Pinned control-plane versions (see hack/tools/*/go.mod).
KUBE_VERSION := 1.37.2
KUBE_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(p).gitVersion=v$(KUBE_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=37 -X $(p).gitTreeState=clean)

IMAGE_REPO ?= custom-metrics-adapter
IMAGE_TAG  ?= $(VERSION)

.PHONY: build
build: ## Build the adapter, the load app and the load generator into bin/ (as the images do)
	VERSION=$(VERSION) hack/build.sh $(BIN) ./cmd/adapter ./cmd/loadgen ./app

.PHONY: unit
unit: ## Unit tests with the race detector
	CGO_ENABLED=1 GOFLAGS= go test -race -count=1 ./pkg/... ./app/... ./cmd/... ./internal/... ./hack/... ./test/localstack/...

.PHONY: integration
integration: $(BIN)/prometheus $(BIN)/victoria-metrics $(BIN)/prom-label-proxy ## The provider against real Prometheus servers scraping real load-app processes, VictoriaMetrics and prom-label-proxy
	go test -count=1 -timeout 10m ./test/integration/...

.PHONY: e2e
e2e: tools $(BIN)/cortex build ## End-to-end: real control plane, HPA controller, Prometheus, Cortex, adapter, app
	@mkdir -p _output
	go test -count=1 -timeout 40m -parallel 12 -v ./test/e2e/... 2>&1 | tee $(CURDIR)/_output/e2e.log

.PHONY: faults
faults: tools build ## Fault suite on the real stack: Prometheus paused and killed, a replica stopped, the API server restarted, hostile input, bad rules files
	@mkdir -p _output
	go test -count=1 -timeout 20m -v ./test/faults/... 2>&1 | tee $(CURDIR)/_output/faults.log

.PHONY: repo
repo: shellcheck kubectl $(BIN)/helm $(BIN)/promtool ## Repository checks: manifests, kustomizations and the Helm chart, the alerts (promtool), shellcheck, Dockerfile build stages
	go test -count=1 ./test/repo/...

.PHONY: test
test: verify repo unit integration e2e faults ## Every test (what CI runs)

.PHONY: lint
lint: ## golangci-lint (pinned in go.mod's tool block; .golangci.yml)
	go tool golangci-lint run ./...

.PHONY: verify
verify: verify-fmt lint verify-generated verify-structured-logging ## Formatting, lint, generated code, structured logging, and go.mod/go.sum tidy
	@go mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

.PHONY: verify-generated
verify-generated: ## Fail if pkg/resourcemetrics/openapi, the MetricRule deepcopy and CRD (and the chart's copy) and the Grafana dashboard are not what hack/ generates
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	hack/openapi-gen.sh "$$tmp"; \
	diff -u pkg/resourcemetrics/openapi/zz_generated.openapi.go "$$tmp/zz_generated.openapi.go" || \
		{ echo "pkg/resourcemetrics/openapi/zz_generated.openapi.go is not what hack/openapi-gen.sh generates: run make generate"; exit 1; }; \
	go run ./hack/dashboard -out "$$tmp/dash"; \
	for f in manifests/monitoring/dashboard.json manifests/helm/custom-metrics-adapter/files/dashboard.json; do \
		diff -u "$$f" "$$tmp/dash/$$f" || { echo "$$f is not what hack/dashboard generates: run make generate"; exit 1; }; \
	done; \
	hack/crd-gen.sh "$$tmp/obj" "$$tmp/crd"; \
	for f in pkg/apis/rules/v1alpha1/zz_generated.deepcopy.go:obj/zz_generated.deepcopy.go manifests/metric-rules/crd.yaml:crd/crd.yaml \
		manifests/helm/custom-metrics-adapter/files/metricrules-crd.yaml:crd/crd.yaml; do \
		diff -u "$${f%%:*}" "$$tmp/$${f#*:}" || { echo "$${f%%:*} is not what hack/crd-gen.sh generates: run make generate"; exit 1; }; \
	done

.PHONY: verify-structured-logging
verify-structured-logging: ## logcheck (pinned in go.mod's tool block): klog calls are structured (InfoS, ErrorS), with key/value pairs
	@go tool sigs.k8s.io/logtools/logcheck ./... || { echo "Fix structured logging: klog.InfoS and klog.ErrorS with key/value pairs, not Infof"; exit 1; }

.PHONY: fuzz
fuzz: ## Fuzz selector -> PromQL, the namespace confinement of PromQL, the check of a team's templates and the Prometheus answer decoder, 1M executions each (not in CI)
	go test -run '^$$' -fuzz FuzzFromSelector -fuzztime 1000000x ./pkg/promql
	go test -run '^$$' -fuzz FuzzIsolation -fuzztime 1000000x ./pkg/promql
	go test -run '^$$' -fuzz FuzzTeamTemplate -fuzztime 1000000x ./pkg/rules
	go test -run '^$$' -fuzz FuzzTeamResourceTemplate -fuzztime 1000000x ./pkg/rules
	go test -run '^$$' -fuzz FuzzDecodeQuery -fuzztime 1000000x ./pkg/promclient

.PHONY: generate
generate: ## Regenerate the OpenAPI definitions of metrics.k8s.io (pkg/resourcemetrics/openapi), the MetricRule deepcopy functions and CRD, and the Grafana dashboard
	hack/openapi-gen.sh
	hack/crd-gen.sh
	cp manifests/metric-rules/crd.yaml manifests/helm/custom-metrics-adapter/files/metricrules-crd.yaml
	go run ./hack/dashboard

.PHONY: vet
vet: ## go vet
	go vet ./...

.PHONY: verify-fmt
verify-fmt: ## Fail on unformatted Go files
	@files=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$files" ]; then echo "gofmt needed:"; echo "$$files"; exit 1; fi

.PHONY: tools
TOOLS := $(BIN)/kube-apiserver $(BIN)/kube-controller-manager $(BIN)/etcd $(BIN)/prometheus $(BIN)/prometheus-adapter $(BIN)/helm
tools: kubectl ## Build the servers the local stack runs and helm, from pinned modules (one after the other, saying which of how many)
	@hack/build-tools.sh $(TOOLS)

$(BIN)/kube-apiserver $(BIN)/kube-controller-manager &: hack/tools/k8s/go.mod hack/tools/k8s/go.sum
	@echo ">> building kube-apiserver and kube-controller-manager v$(KUBE_VERSION) (first time: several minutes)"
	cd hack/tools/k8s && go build -ldflags "$(KUBE_LDFLAGS)" -o $(BIN)/ \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
	@touch $(BIN)/kube-apiserver $(BIN)/kube-controller-manager

# kubectl renders and applies the manifests. One on the PATH is used; else
# it is built from the same pinned module as the control plane.
.PHONY: kubectl
kubectl:
	@command -v kubectl >/dev/null || [ -x $(BIN)/kubectl ] || $(MAKE) --no-print-directory $(BIN)/kubectl

$(BIN)/kubectl: hack/tools/k8s/go.mod hack/tools/k8s/go.sum
	@echo ">> kubectl is not on the PATH: building it (v$(KUBE_VERSION))"
	cd hack/tools/k8s && go build -ldflags "$(KUBE_LDFLAGS)" -o $(BIN)/ k8s.io/kubernetes/cmd/kubectl

$(BIN)/etcd: hack/tools/etcd/go.mod hack/tools/etcd/go.sum hack/tools/etcd/main.go
	@echo ">> building etcd (first time: about a minute)"
	cd hack/tools/etcd && go build -ldflags "-s -w" -o $(BIN)/etcd .

# Debian's prometheus package is built without Kubernetes service discovery,
# which the local stack needs, so Prometheus is built from its module too.
$(BIN)/prometheus: hack/tools/prometheus/go.mod hack/tools/prometheus/go.sum
	@echo ">> building prometheus (first time: several minutes)"
	cd hack/tools/prometheus && go build -ldflags "-s -w" -o $(BIN)/prometheus github.com/prometheus/prometheus/cmd/prometheus

# promtool checks and unit-tests the alerts (manifests/monitoring), from the
# same pinned module.
$(BIN)/promtool: hack/tools/prometheus/go.mod hack/tools/prometheus/go.sum
	@echo ">> building promtool (first time: a few minutes)"
	cd hack/tools/prometheus && go build -ldflags "-s -w" -o $(BIN)/promtool github.com/prometheus/prometheus/cmd/promtool

# prometheus-adapter runs in the local stack as another metrics server
# behind this adapter (--upstreams), as in a migration.
$(BIN)/prometheus-adapter: hack/tools/prometheus-adapter/go.mod hack/tools/prometheus-adapter/go.sum
	@echo ">> building prometheus-adapter (first time: several minutes)"
	cd hack/tools/prometheus-adapter && go build -ldflags "-s -w" -o $(BIN)/prometheus-adapter sigs.k8s.io/prometheus-adapter/cmd/adapter

# The other stores the tests run (not the demo): VictoriaMetrics, whose
# query length limit the integration suite meets, and Cortex, whose
# tenants the e2e suite reads; and prom-label-proxy in front of Prometheus.
.PHONY: tools-stores
tools-stores: ## Build the other stores the tests run (and prom-label-proxy), from pinned modules
	@hack/build-tools.sh $(BIN)/victoria-metrics $(BIN)/cortex $(BIN)/prom-label-proxy

$(BIN)/victoria-metrics: hack/tools/victoriametrics/go.mod hack/tools/victoriametrics/go.sum
	@echo ">> building VictoriaMetrics (first time: about two minutes)"
	cd hack/tools/victoriametrics && go build -ldflags "-s -w" -o $(BIN)/victoria-metrics github.com/VictoriaMetrics/VictoriaMetrics/app/victoria-metrics

# prom-label-proxy pins every query to one namespace, as OpenShift runs it
# in front of its querier; the integration suite reads Prometheus through it.
$(BIN)/prom-label-proxy: hack/tools/prom-label-proxy/go.mod hack/tools/prom-label-proxy/go.sum
	@echo ">> building prom-label-proxy (first time: about a minute)"
	cd hack/tools/prom-label-proxy && go build -ldflags "-s -w" -o $(BIN)/prom-label-proxy github.com/prometheus-community/prom-label-proxy

# Cortex is built as its own Makefile builds it: with netgo and slicelabels
# (without slicelabels its ingester panics on the first push).
$(BIN)/cortex: hack/tools/cortex/go.mod hack/tools/cortex/go.sum
	@echo ">> building Cortex (first time: a quarter of an hour)"
	cd hack/tools/cortex && go build -tags netgo,slicelabels -ldflags "-s -w" -o $(BIN)/cortex github.com/cortexproject/cortex/cmd/cortex

# helm lints and renders manifests/helm/custom-metrics-adapter (make repo).
$(BIN)/helm: hack/tools/helm/go.mod hack/tools/helm/go.sum
	@echo ">> building helm (first time: a few minutes)"
	cd hack/tools/helm && go build -ldflags "-s -w" -o $(BIN)/helm helm.sh/helm/v3/cmd/helm
	@touch $(BIN)/helm

.PHONY: shellcheck
shellcheck: ## Make sure shellcheck is installed (Debian's package)
	@command -v shellcheck >/dev/null || { echo ">> installing shellcheck (Debian package)"; \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends shellcheck >/dev/null; }

.PHONY: clean
clean: ## Remove built binaries and run folders (not the Go build cache)
	rm -rf $(BIN) _output run

.PHONY: help
help: ## List targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

.PHONY: demo
demo: tools build ## The local demo (DEMO_ARGS=--quick for a short run that exits)
	go run ./hack/demo $(DEMO_ARGS)

.PHONY: kind-demo
kind-demo: ## The demo on a kind cluster, with the same driver (needs Docker, kind and Go; DEMO_ARGS=--quick as for make demo)
	DEMO_ARGS="$(DEMO_ARGS)" hack/kind-demo.sh

.PHONY: image-adapter image-app
image-adapter: ## Build the adapter image (needs Docker)
	docker build -f Dockerfile.adapter --build-arg VERSION=$(VERSION) -t $(IMAGE_REPO)/adapter:$(IMAGE_TAG) .
image-app: ## Build the load app image (needs Docker)
	docker build -f Dockerfile.app --build-arg VERSION=$(VERSION) -t $(IMAGE_REPO)/app:$(IMAGE_TAG) .

.PHONY: bench
bench: tools build ## The adapter next to raw Prometheus at 100, 1,000 and 10,000 pods (BENCH_ARGS=...; results in docs/performance.md)
	go run ./hack/bench -pods=100,1000,10000 -duration=10s $(BENCH_ARGS)

.PHONY: bench-fleet
bench-fleet: tools build ## HPAs at 100, 1,000 and 2,000 on the real HPA controller, shared queries off and on (BENCH_FLEET_ARGS=...; results in docs/performance.md; about 40 minutes)
	go run ./hack/benchfleet -hpas=100,1000,2000 $(BENCH_FLEET_ARGS)

.PHONY: bench-quick
bench-quick: tools build ## The same at 100 and 1,000 pods, a few seconds per row (under 3 minutes)
	go run ./hack/bench -pods=100,1000 -duration=4s $(BENCH_ARGS)
