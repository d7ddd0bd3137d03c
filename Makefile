# Leasehold: fenced Kubernetes Lease locks for Pods, by annotation.
# `make help` lists the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

K8S_VERSION ?= v1.37.2
LEASEHOLD_CACHE ?= $(HOME)/.cache/leasehold
export LEASEHOLD_CACHE
K8S_BIN := $(LEASEHOLD_CACHE)/k8s/$(K8S_VERSION)
export KUBEBUILDER_ASSETS ?= $(K8S_BIN)
GO_TEST_FLAGS ?= -count=1

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: envtest
envtest: ## Build kube-apiserver, etcd and kube-controller-manager (its garbage collector) for the envtest suites (cached in ~/.cache/leasehold).
	hack/build-k8s.sh kube-apiserver etcd kube-controller-manager >/dev/null

# The version every binary reports (--version) and logs at start: git describe, or dev.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
export VERSION
LDFLAGS := -X github.com/leasehold/leasehold/internal/version.version=$(VERSION)

.PHONY: build
build: ## Build the binaries into bin/ (VERSION=... overrides git describe).
	CGO_ENABLED=0 go build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

.PHONY: sizes
sizes: ## Print each binary's size as go build makes it and stripped (-s -w), and how many packages it links (BENCHMARKS.md, Binary sizes).
	@d=$$(mktemp -d); for c in leasehold kubectl-leasehold leasehold-agent leasehold-webhook; do \
	  CGO_ENABLED=0 go build -o $$d/$$c ./cmd/$$c && CGO_ENABLED=0 go build -ldflags='-s -w' -o $$d/$$c.s ./cmd/$$c && \
	  printf '%-18s %10d bytes  stripped %10d bytes  %4d packages\n' $$c $$(stat -c %s $$d/$$c) $$(stat -c %s $$d/$$c.s) $$(go list -deps ./cmd/$$c | wc -l) || exit 1; \
	done; rm -rf $$d

.PHONY: unit
unit: envtest ## Run the Go tests (unit and envtest suites) without the real-node e2e suite.
	@command -v python3 >/dev/null || { echo "installing python3 from Debian (go test ./docs/ runs docs/snippets/leasehold.py)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null; }
	hack/reap-envtest.sh
	go test $(GO_TEST_FLAGS) ./...

.PHONY: race
race: envtest ## Run the Go tests with the race detector, the agent processes they start too (not in `make test`).
	@command -v gcc >/dev/null || { echo "installing gcc from Debian (the race detector needs cgo)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null; }
	hack/reap-envtest.sh
	CGO_ENABLED=1 go test -race $(GO_TEST_FLAGS) ./...

# `make chaos` runs the seeded fault-injection suite (internal/testing/chaos) for CHAOS_DURATION
# and writes RELIABILITY.md; CHAOS_SEED=N replays a run's fault schedule. `make unit`
# runs the same suite for 60s as part of `go test ./...`.
CHAOS_DURATION ?= 30m
CHAOS_SEED ?=
CHAOS_TIMEOUT ?= 3h

.PHONY: chaos
chaos: envtest ## Long seeded fault-injection run of the lock agents (CHAOS_DURATION=30m, CHAOS_SEED=N replays); writes RELIABILITY.md.
	hack/reap-envtest.sh
	CHAOS_DURATION=$(CHAOS_DURATION) CHAOS_SEED=$(CHAOS_SEED) LEASEHOLD_RELIABILITY_OUT=$(CURDIR)/RELIABILITY.md \
	  CHAOS_COMMAND="make chaos CHAOS_DURATION=$(CHAOS_DURATION)$(if $(CHAOS_SEED), CHAOS_SEED=$(CHAOS_SEED))" \
	  go test -count=1 -run '^TestChaos$$' -v -timeout $(CHAOS_TIMEOUT) ./internal/testing/chaos/

.PHONY: e2e
e2e: ## Bring up the local one-node cluster, run the e2e suite on real Pods, tear it down (root).
	hack/e2e.sh

.PHONY: test
test: ## Run every test: lint, unit + envtest suites (real kube-apiserver + etcd), a short fuzz run, the real-node e2e suite.
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) fuzz-short
	$(MAKE) e2e

.PHONY: demo
demo: ## Build everything, bring up a local one-node cluster, install Leasehold and the example app, show locks changing hands (root).
	hack/demo.sh

.PHONY: demo-down
demo-down: ## Tear the local cluster down, leaving nothing behind.
	hack/cluster.sh down

# Without IMAGE, make deploy builds the image, pushes it to the local node's registry
# (hack/cluster.sh up runs it on 127.0.0.1:15500) and installs it by digest.
IMAGE ?=
LOCAL_REGISTRY ?= 127.0.0.1:15500

.PHONY: deploy
deploy: ## Install Leasehold on the cluster of your current kubeconfig; IMAGE=your/registry/leasehold@sha256:... (default: built and pushed to the local node's registry, by digest).
	@mkdir -p bin/deploy
	@image='$(IMAGE)'; if [ -z "$$image" ]; then \
	  REGISTRY=$(LOCAL_REGISTRY) PUSH=1 IMAGES_OUT=$(CURDIR)/bin/images hack/images.sh leasehold && \
	  image=leasehold.local/leasehold@$$(cat bin/images/leasehold.digest); fi; \
	  echo "image: $$image"; hack/deploy-kustomization.sh "$$image" > bin/deploy/kustomization.yaml
	kubectl apply -k bin/deploy
	kubectl -n leasehold-system rollout status deployment/leasehold-webhook --timeout=180s

.PHONY: release
release: ## Build a release into bin/release/VERSION (VERSION=vX.Y.Z): image index, Helm chart (pushed to the local registry when it runs), kubectl-leasehold archives, krew manifest, notes, SHA256SUMS.
	hack/release.sh '$(VERSION)'

# The files hack/cluster.sh sources are named for the reader; git's 'hack/*.sh' matches them too (* matches /).
SHELL_SCRIPTS = $(shell git ls-files 'hack/*.sh' 'hack/lib/cluster/*.sh' .ci/run)

.PHONY: vet lint shellcheck
lint: vet shellcheck ## go vet, gofmt and shellcheck (part of `make test`).
vet: ## go vet and gofmt.
	go vet ./...
	go vet -tags e2e ./e2e/
	go vet -tags scalebench ./internal/testing/scalebench/
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt -w these files:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
shellcheck: ## shellcheck every shell script (installs Debian's shellcheck when missing).
	@command -v shellcheck >/dev/null || { echo "installing shellcheck from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null; }
	shellcheck -x $(SHELL_SCRIPTS)

# ---- Local one-node cluster (hack/cluster.sh, root only) --------------------------------
# The end-to-end suite and `make demo` run on it:
#   make cluster-up && eval "$$(hack/cluster.sh env)" && kubectl get nodes

.PHONY: images
images: ## Build the images (pause, leasehold for linux/amd64+arm64, example-app) as OCI layouts; push them to the local node's registry when it runs.
	hack/images.sh

.PHONY: cluster-up
cluster-up: ## Start a fresh one-node cluster (cleans leftovers first; its registry; node Ready, images pushed).
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the cluster and remove every trace (processes, mounts, iptables, bridge, cgroups).
	hack/cluster.sh down

.PHONY: cluster-smoke
cluster-smoke: ## Check the running cluster: native sidecar, downward API, tokens, Service IPs, SIGTERM.
	hack/cluster-smoke.sh

# ---- Webhook fuzzing, manifests, benchmarks ---------------------------------------------

# fuzz-short counts executions rather than seconds: with a duration, Go 1.26's fuzz
# coordinator can fail a run with a bare "context deadline exceeded" when the machine is
# busy (golang/go#75804, fixed in Go 1.27); a count has no deadline to race.
FUZZTIME ?= 5000x
FUZZTIME_LONG ?= 10m
# package:target pairs; `make fuzz-short` runs each for $(FUZZTIME), `make fuzz` for $(FUZZTIME_LONG).
FUZZ_TARGETS := webhook:FuzzParseAnnotations webhook:FuzzHandler sidecar/api:FuzzAPI

.PHONY: fuzz-short
fuzz-short: ## Short fuzz run of every fuzz target ($(FUZZTIME) each; part of `make test`).
	@for t in $(FUZZ_TARGETS); do \
	  pkg=./$${t%%:*}/ f=$${t##*:}; \
	  echo "go test $$pkg -run '^$$' -fuzz '^$$f$$' -fuzztime $(FUZZTIME)"; \
	  go test $$pkg -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -parallel 1 || exit 1; \
	done

.PHONY: fuzz
fuzz: ## Long fuzz run of every fuzz target ($(FUZZTIME_LONG) each).
	@for t in $(FUZZ_TARGETS); do \
	  pkg=./$${t%%:*}/ f=$${t##*:}; \
	  echo "go test $$pkg -run '^$$' -fuzz '^$$f$$' -fuzztime $(FUZZTIME_LONG)"; \
	  go test $$pkg -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME_LONG) || exit 1; \
	done

.PHONY: manifests
manifests: ## Render the kustomize base, overlays and monitoring (checks they build) into bin/manifests/.
	@mkdir -p bin/manifests
	$(K8S_BIN)/kubectl kustomize manifests/base > bin/manifests/leasehold.yaml
	$(K8S_BIN)/kubectl kustomize manifests/overlays/cert-manager > bin/manifests/leasehold-cert-manager.yaml
	$(K8S_BIN)/kubectl kustomize manifests/monitoring > bin/manifests/leasehold-monitoring.yaml

.PHONY: bench-webhook
bench-webhook: envtest ## Webhook benchmarks: the handler (Go benchmarks) and TLS load runs of the real binary; raw results into BENCHMARKS.md.
	hack/bench-webhook.sh

.PHONY: bench
bench: bench-agent bench-webhook bench-fair ## Run every benchmark and write the results into BENCHMARKS.md.

# bench-fair runs the tight loop of BenchmarkFairness (sidecar/agent/fair_bench_test.go)
# with the agent of this tree and with one built from FAIR_BASELINE, the last commit
# before fair queueing, for the table's "before" rows (cached in ~/.cache/leasehold).
FAIR_BASELINE ?= ba46c75
FAIR_DURATION ?= 5m
FAIR_PODS ?= 3,5,10
FAIR_BASELINE_DIR := $(LEASEHOLD_CACHE)/fair-baseline/$(FAIR_BASELINE)

.PHONY: bench-fair
bench-fair: envtest ## Fairness across Pods: 3, 5, 10 agents in a tight loop on one mutex, FAIR_DURATION (5m) each, beside the agent before the queue; writes BENCHMARKS.md.
	@test -x $(FAIR_BASELINE_DIR)/leasehold-agent || { rm -rf $(FAIR_BASELINE_DIR) && mkdir -p $(FAIR_BASELINE_DIR)/src && \
	  git archive $(FAIR_BASELINE) | tar -x -C $(FAIR_BASELINE_DIR)/src && \
	  (cd $(FAIR_BASELINE_DIR)/src && CGO_ENABLED=0 go build -o ../leasehold-agent ./cmd/leasehold-agent); }
	LEASEHOLD_FAIR_BASELINE=$(FAIR_BASELINE) LEASEHOLD_FAIR_BASELINE_BIN=$(FAIR_BASELINE_DIR)/leasehold-agent \
	  LEASEHOLD_FAIR_DURATION=$(FAIR_DURATION) LEASEHOLD_FAIR_PODS=$(FAIR_PODS) LEASEHOLD_BENCH_OUT=$(CURDIR)/BENCHMARKS.md \
	  go test -count=1 -p 1 -run '^$$' -bench BenchmarkFairness -benchtime=1x -timeout 120m ./sidecar/agent/

# `make bench-scale` is not part of `make bench` (nor of `make test`): it runs 1,000 agent
# processes and restarts kube-apiserver under them, about 17 minutes on 2 cores.
# SCALE_STEPS=100,300 SCALE_WINDOW=30s SCALE_EXPIRY_UNTIL=0 shorten it (see internal/testing/scalebench).
.PHONY: bench-scale
bench-scale: envtest ## Fleets of 100, 300 and 1,000 agents (and client-go electors) against one API server: steady cost, cold start, kube-apiserver restart; writes BENCHMARKS.md (Scale).
	LEASEHOLD_BENCH_OUT=$(CURDIR)/BENCHMARKS.md go test -tags scalebench -count=1 -run '^$$' -bench BenchmarkScale -benchtime=1x -timeout 30m -v ./internal/testing/scalebench/

.PHONY: bench-agent
bench-agent: envtest ## Measure the lock agent against its targets, side by side with client-go leader election; writes BENCHMARKS.md (Agent).
	LEASEHOLD_BENCH_OUT=$(CURDIR)/BENCHMARKS.md go test -count=1 -p 1 -run '^$$' -bench BenchmarkAgent -benchtime=1x -timeout 20m ./sidecar/agent/
