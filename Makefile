# vxbridge: Docker network + IPAM driver, shipped as the managed plugin vxbridge:latest.
# `make install` sets it up on a Debian machine; `make test` runs every test.

SHELL := /bin/bash
# A fresh root shell may not have Go on its PATH.
export PATH := /usr/local/go/bin:$(PATH)

BIN      := bin/vxbridge
FUZZTIME ?= 30s
# `make install` settings, applied before the plugin's first enable (all optional):
#   STATE_DIR=/path  DOCKER_SOCKET=/path  PLUGIN_SETTINGS="KEY=VALUE ..."  DOCKER_HOST=unix://...
STATE_DIR       ?=
DOCKER_SOCKET   ?=
PLUGIN_SETTINGS ?=
# The three-host lab's folder (scripts/lab.sh).
LAB_ROOT ?= /tmp/vxlab

.DEFAULT_GOAL := help
# Steps depend on each other's side effects (dockerd up before the plugin): keep them in order.
.NOTPARALLEL:
.PHONY: help build unit deps dockerd install uninstall test-image e2e test lint fuzz bench lab lab-down lab-test clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build the static binary bin/vxbridge
	CGO_ENABLED=0 go build -trimpath -o $(BIN) .

unit: ## run the unit tests (no root needed; the Consul store, cluster and IPAM tests run a real agent from scripts/consul.sh)
	VXBRIDGE_CONSUL=$$(bash scripts/consul.sh) go test ./...

deps: ## install the missing Debian packages (docker.io, iptables, busybox-static, ...)
	bash scripts/deps.sh

dockerd: ## start dockerd unless it already answers
	bash scripts/dockerd.sh

install: deps dockerd build ## set up everything and (re)install the plugin vxbridge:latest
	bash scripts/install-plugin.sh $(if $(STATE_DIR),--state-dir '$(STATE_DIR)') \
		$(if $(DOCKER_SOCKET),--docker-socket '$(DOCKER_SOCKET)') $(BIN) $(PLUGIN_SETTINGS)

uninstall: ## remove the plugin (keeps the state in /var/lib/vxbridge)
	bash scripts/uninstall-plugin.sh

test-image: deps dockerd ## build the test image vxbridge-test/busybox:latest if absent
	bash scripts/test-image.sh

e2e: install test-image ## run the end-to-end tests against the real dockerd (root)
	go test -tags e2e -count=1 -v -timeout 40m ./tests/...

test: unit e2e lab-test ## run all tests: unit, e2e on this host's dockerd, then the three-host lab

lint: ## check gofmt and go vet (also with the e2e and lab tags)
	@files=$$(gofmt -l .); if [ -n "$$files" ]; then echo "gofmt -l finds unformatted files:"; echo "$$files"; exit 1; fi
	go vet ./...
	go vet -tags e2e ./tests/...
	go vet -tags lab ./tests/...

fuzz: ## run each Fuzz* target for FUZZTIME (default 30s)
	bash scripts/fuzz.sh $(FUZZTIME)

bench: install ## published-port throughput, vxbridge vs Docker's bridge (writes tests/bench-results.md)
	bash tests/bench-ports.sh

lab: deps build ## bring up 3 Docker hosts + Consul servers in namespaces (`scripts/lab.sh env`)
	VXLAB_ROOT=$(LAB_ROOT) bash scripts/lab.sh up

lab-down: ## remove the lab, leaving nothing behind
	VXLAB_ROOT=$(LAB_ROOT) bash scripts/lab.sh down

lab-test: deps build ## lab up, the lab tests (tests/lab), lab down; times each step
	VXLAB_ROOT=$(LAB_ROOT) bash scripts/lab-test.sh

clean: ## remove bin/ and build/
	rm -rf bin build
