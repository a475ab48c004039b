# vxbridge: Docker network + IPAM driver, shipped as the managed plugin vxbridge:latest.
# `make install` sets it up on a Debian machine; `make test` runs every test.

SHELL := /bin/bash
# A fresh root shell may not have Go on its PATH.
export PATH := /usr/local/go/bin:$(PATH)

BIN      := bin/vxbridge
FUZZTIME ?= 30s

.DEFAULT_GOAL := help
# Steps depend on each other's side effects (dockerd up before the plugin): keep them in order.
.NOTPARALLEL:
.PHONY: help build unit deps dockerd install uninstall test-image e2e test lint fuzz bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build the static binary bin/vxbridge
	CGO_ENABLED=0 go build -trimpath -o $(BIN) .

unit: ## run the unit tests (no root needed)
	go test ./...

deps: ## install the missing Debian packages (docker.io, iptables, busybox-static, ...)
	bash scripts/deps.sh

dockerd: ## start dockerd unless it already answers
	bash scripts/dockerd.sh

install: deps dockerd build ## set up everything and (re)install the plugin vxbridge:latest
	bash scripts/install-plugin.sh $(BIN)

uninstall: ## remove the plugin (keeps the state in /var/lib/vxbridge)
	bash scripts/uninstall-plugin.sh

test-image: deps dockerd ## build the test image vxbridge-test/busybox:latest if absent
	bash scripts/test-image.sh

e2e: install test-image ## run the end-to-end tests against the real dockerd (root)
	go test -tags e2e -count=1 -v -timeout 40m ./tests/...

test: unit e2e ## run all tests: unit, then e2e

lint: ## check gofmt and go vet (with and without the e2e tag)
	@files=$$(gofmt -l .); if [ -n "$$files" ]; then echo "gofmt -l finds unformatted files:"; echo "$$files"; exit 1; fi
	go vet ./...
	go vet -tags e2e ./tests/...

fuzz: ## run each Fuzz* target for FUZZTIME (default 30s)
	bash scripts/fuzz.sh $(FUZZTIME)

bench: install ## published-port throughput, vxbridge vs Docker's bridge (writes tests/bench-results.md)
	bash tests/bench-ports.sh

clean: ## remove bin/ and build/
	rm -rf bin build
