# emberd — two commands on a fresh Debian machine:
#   make run    install what's missing, build, build the guest images, serve on 127.0.0.1:7777
#   make test   the same set-up, then every test (including the real-VM ones)

SHELL := /bin/bash
CARGO ?= cargo
MUSL_TARGET := x86_64-unknown-linux-musl
DATA_DIR ?= $(or $(EMBERD_DATA_DIR),$(HOME)/.local/share/emberd)
ADDR ?= 127.0.0.1:7777
INIT_BIN := target/$(MUSL_TARGET)/release/emberd-init
EMBERD_BIN := target/release/emberd
export EMBERD_DATA_DIR := $(DATA_DIR)
export EMBERD_INIT_BIN := $(CURDIR)/$(INIT_BIN)

.PHONY: setup build images run test test-firecracker smoke-firecracker lint bench clean-images

## Install every system package and Rust target the project needs (idempotent).
setup:
	@bash scripts/install-deps.sh

## Build the daemon, the CLI and the static guest agent.
build: setup
	$(CARGO) build --release -p emberd -p emberctl
	$(CARGO) build --release -p emberd-init --target $(MUSL_TARGET)

## Build kernel, initramfs and language packs into $(DATA_DIR) (a no-op when up to date).
images: build
	$(EMBERD_BIN) image build --data-dir "$(DATA_DIR)" --init-bin "$(INIT_BIN)"

## Set up and serve in the foreground.
run: images
	@echo "emberd: serving on http://$(ADDR) — try:"
	@echo "  curl -s -X POST $(ADDR)/sandboxes -d '{\"language_pack\":\"python\"}'"
	@echo "  curl -s -X POST $(ADDR)/sandboxes/<id>/exec -d '{\"code\":\"print(6*7)\"}'"
	$(EMBERD_BIN) serve --addr $(ADDR) --data-dir "$(DATA_DIR)"

## Set up, then run every test, real VMs included.
test: images
	$(CARGO) nextest run --workspace --no-fail-fast

## The real-VM suite on Firecracker (needs hardware KVM and firecracker; fails otherwise).
test-firecracker: images
	EMBERD_TEST_BACKEND=firecracker $(CARGO) nextest run -p emberd --test e2e --test guest_privilege --test containment --test vm_killed --test http_limits --test processes --test files --test files_hostile --no-fail-fast

## Smoke test on real Firecracker: one table (boot entry, ACPI, vsock, stop, 20 restores,
## a corrupted snapshot). Needs hardware KVM and firecracker >= 1.15.1; fails loudly otherwise.
smoke-firecracker:
	python3 scripts/smoke-firecracker.py

## Formatting and lints, as CI-quality gates for contributors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Benchmark: starts its own daemons (cold boot, restore, pool), prints a table, writes bench.json.
bench: images
	target/release/emberctl bench --json bench.json

clean-images:
	rm -rf "$(DATA_DIR)"

.PHONY: openapi test-openapi

## Regenerate the committed OpenAPI document from the handlers (a test fails when it is stale).
openapi:
	$(CARGO) run --quiet -p emberd -- openapi > docs/openapi.json

## Property-based tests (schemathesis) of a live daemon against its OpenAPI document:
## no 5xx, documented statuses and content types, bodies that match their schemas.
test-openapi: images
	bash scripts/python-env.sh
	target/pyenv/bin/python scripts/with-daemon.py -- \
		target/pyenv/bin/python -m pytest -p no:cacheprovider -q tests/openapi/test_schemathesis.py
