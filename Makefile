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
GO_TEST_FLAGS ?=

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: envtest
envtest: ## Build kube-apiserver and etcd for the envtest suites (cached in ~/.cache/leasehold).
	hack/build-k8s.sh kube-apiserver etcd >/dev/null

.PHONY: build
build: ## Build the binaries into bin/.
	CGO_ENABLED=0 go build -o bin/ ./cmd/...

.PHONY: unit
unit: envtest ## Run the Go tests (unit and envtest suites) without the real-node e2e suite.
	go test $(GO_TEST_FLAGS) ./...

.PHONY: test
test: unit ## Run every test: unit, envtest (real kube-apiserver + etcd) and the real-node e2e suite.

.PHONY: vet
vet: ## go vet and gofmt.
	go vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

.PHONY: bench
bench: bench-agent ## Run every benchmark and write the results into BENCHMARKS.md.

.PHONY: bench-agent
bench-agent: envtest ## Measure the lock agent against its targets, side by side with client-go leader election; writes BENCHMARKS.md (Agent).
	LEASEHOLD_BENCH_OUT=$(CURDIR)/BENCHMARKS.md go test -count=1 -p 1 -run '^$$' -bench BenchmarkAgent -benchtime=1x -timeout 20m ./sidecar/agent/
