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

.PHONY: setup build images run test test-python test-firecracker smoke-firecracker lint bench clean-images install

# `make install`: where the binaries, the system-wide images and the unit go.
PREFIX ?= /usr/local
SYSTEM_DATA_DIR ?= /var/lib/emberd
SYSTEMD_UNIT_DIR ?= /etc/systemd/system

## Install every system package and Rust target the project needs (idempotent).
setup:
	@bash scripts/install-deps.sh
	@bash scripts/python-env.sh

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
	$(MAKE) --no-print-directory test-python

## The Python suites, each against a fresh daemon with real VMs: the SDK, the examples, the
## MCP tools, the OpenAPI document under schemathesis, and the containment eval.
test-python: test-sdk test-examples test-mcp test-openapi test-eval eval

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

## Install emberd and emberctl under $(PREFIX), the images in $(SYSTEM_DATA_DIR) and the
## systemd unit (packaging/emberd.service); run as root. DESTDIR stages the whole tree.
install: images
	install -D -m 0755 $(EMBERD_BIN) $(DESTDIR)$(PREFIX)/bin/emberd
	install -D -m 0755 target/release/emberctl $(DESTDIR)$(PREFIX)/bin/emberctl
	install -d -m 0700 $(DESTDIR)$(SYSTEM_DATA_DIR)
	cp -a "$(DATA_DIR)/blobs" "$(DATA_DIR)/manifest.json" $(DESTDIR)$(SYSTEM_DATA_DIR)/
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's|@BINDIR@|$(PREFIX)/bin|' packaging/emberd.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/emberd.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/emberd.service
	@echo "emberd: installed; start it with: systemctl daemon-reload && systemctl enable --now emberd"

clean-images:
	rm -rf "$(DATA_DIR)"

.PHONY: test-sdk test-examples test-mcp

## The Python SDK: mypy --strict on the package and its tests, then its pytest suite
## against a fresh daemon (scripts/with-daemon.py).
test-sdk: images
	@bash scripts/python-env.sh
	target/pyenv/bin/mypy --strict clients/python/src/emberd clients/python/tests
	target/pyenv/bin/python scripts/with-daemon.py -- target/pyenv/bin/pytest -q -W ignore::DeprecationWarning clients/python/tests

## Every example of examples/, run against a fresh daemon and checked (05 talks to a scripted
## OpenAI-compatible server on loopback, examples/support/fake_llm.py).
test-examples: images
	@bash scripts/python-env.sh
	target/pyenv/bin/python scripts/with-daemon.py -- target/pyenv/bin/pytest -q -W ignore::DeprecationWarning examples/test_examples.py

## Containment eval: hostile actions run on the host and in sandboxes, a table of what got
## through; fails when a host tripwire trips in a sandbox run. EVAL_ARGS="--model NAME" lets
## an LLM behind OPENAI_BASE_URL drive it (docs/eval.md).
.PHONY: eval test-eval
eval: images
	target/pyenv/bin/python scripts/with-daemon.py --serve-arg=--pool-size=0 -- target/pyenv/bin/python eval/run.py $(EVAL_ARGS)

## The eval's own tests: tripwires, host bounds, the LLM mode against a scripted endpoint.
test-eval: images
	target/pyenv/bin/python scripts/with-daemon.py --serve-arg=--pool-size=0 -- target/pyenv/bin/python -m pytest -q -p no:cacheprovider eval/tests

## The MCP tools through the Python `mcp` client, over stdio (`emberd mcp`) and HTTP
## (`/mcp`), against a fresh daemon with real VMs.
test-mcp: images
	target/pyenv/bin/python scripts/with-daemon.py -- target/pyenv/bin/python -m pytest -q crates/emberd/tests/mcp

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
