# weft: the two set-up commands on a fresh Debian machine (as root) are
#   make demo    install what is needed, build, and show weft at work
#   make test    install what is needed and run every test
# Tests that need root and network namespaces create their own namespaces and
# never touch the root namespace's links, routes, sysctls or firewall.

SHELL := /bin/bash
CARGO ?= cargo
HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
# The CNI binaries a node installs are linked statically, as the reference
# plugins are: they run on any host or image whatever its libc, and exec
# ~0.2 ms faster (no dynamic loading on every CNI call). --target keeps the
# flag off build scripts and proc macros.
STATIC := RUSTFLAGS="-C target-feature=+crt-static"
RELEASE_DIR := target/$(HOST)/release

# Runtime tools the tests and the demo drive, and the reference plugins the
# differential test and the benchmark compare against.
DEB_PACKAGES := iproute2 iptables ipset nftables conntrack iputils-ping procps \
	containernetworking-plugins iperf3 ca-certificates shellcheck \
	protobuf-compiler containerd runc podman busybox-static

.PHONY: all deps fuzz-deps build release lint test fuzz demo bench clean

all: build

# Installs only what is missing, so a second run costs a few dpkg queries.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "deps: all present"; fi
	@command -v $(CARGO) >/dev/null || { echo "deps: cargo (Rust toolchain) is required"; exit 1; }
	@# rustfmt and clippy for `make lint` (.ci/run), where rustup manages the toolchain.
	@if command -v rustup >/dev/null; then \
		for c in rustfmt clippy; do \
			rustup component list --installed 2>/dev/null | grep -q "^$$c" || rustup component add $$c; \
		done; \
	fi

build: deps
	$(CARGO) build --workspace --all-targets

release: deps
	$(STATIC) $(CARGO) build --workspace --release --bins --target $(HOST)

# The lint gates .ci/run runs before the tests; both are clean on main.
lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# nextest runs each test in its own process (the netns tests unshare per
# test); plain cargo test is the fallback. Both print a closing summary.
# First, without root and in seconds, every conformance case on the policy
# model (e2e/tests/conformance_pure.rs): a semantic regression stops the run
# before the kernel suites. The e2e tests drive the built binaries (weft,
# weft-ipam, weft-agent) the way a cluster does, so every binary is built
# before the rest runs.
# A test that cannot run here (not root, a runtime or tool missing) appends
# `SKIPPED: <test>: <why>` to SKIP_LOG (weft-test-support): the count closes
# the run. Under CI=true such a test fails instead, and so does any skip.
SKIP_LOG := $(abspath $(or $(CARGO_TARGET_DIR),target))/skipped-tests.log
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)
test: deps
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run -p weft-e2e --test conformance_pure
else
	$(CARGO) test -p weft-e2e --test conformance_pure
endif
	$(CARGO) build --workspace --bins
	@rm -f $(SKIP_LOG); status=0; \
	if [ "$(NEXTEST)" = yes ]; then \
		WEFT_SKIP_LOG=$(SKIP_LOG) $(CARGO) nextest run --workspace --no-fail-fast \
			-E 'not binary(conformance_pure)' || status=$$?; \
	else \
		WEFT_SKIP_LOG=$(SKIP_LOG) $(CARGO) test --workspace --no-fail-fast || status=$$?; \
	fi; \
	skipped=$$(cat $(SKIP_LOG) 2>/dev/null | grep -c '^SKIPPED: '); \
	cat $(SKIP_LOG) 2>/dev/null | sort; \
	echo "$$skipped tests skipped"; \
	if [ "$$CI" = true ] && [ "$$skipped" -gt 0 ]; then echo "CI=true: a skipped test fails the run"; status=1; fi; \
	exit $$status

# Fuzz targets (fuzz/fuzz_targets, cargo-fuzz on nightly) for the parsers of
# outside input: CNI config, env and prevResult, manifests and API objects,
# the pod socket's requests, NFLOG datagrams. `make fuzz` runs each
# FUZZ_SECS (5 min; `make fuzz FUZZ_SECS=20` is the short run). Not part of
# `make test`: building the targets with their sanitizer takes about 14
# CPU-minutes from a clean checkout, which the 20-minute budget of
# `make test` on 2 cores cannot hold. The corpus grows in
# fuzz/corpus/<target>, seeded from fuzz/seeds/<target>; a crash stops the
# run and leaves its input in fuzz/artifacts/<target>/.
FUZZ_TARGETS := cni_config cni_env manifest pod_socket nflog
FUZZ_SECS ?= 300
fuzz-deps:
	@if command -v rustup >/dev/null && ! rustup toolchain list | grep -q '^nightly'; then \
		rustup toolchain install nightly --profile minimal; \
	fi
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

fuzz: fuzz-deps
	@cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t target; log=target/fuzz-$$t.log; \
		echo "fuzz: $$t for $(FUZZ_SECS) s (output in fuzz/$$log)"; \
		if ! $(CARGO) +nightly fuzz run $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_SECS) -timeout=10 -print_final_stats=1 >$$log 2>&1; then \
			tail -40 $$log; echo "fuzz: $$t failed; a crashing input is kept in fuzz/artifacts/$$t/"; exit 1; \
		fi; \
		grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units' $$log; \
	done

# The demo is `weft-e2e demo` (e2e/src/demo.rs): a 2-node testbed, three pods
# attached by `weft`, a ClusterIP and a NodePort service, one probe per path
# printed as a table, then a full teardown. Runs as root; exits 1 if a path fails.
DEBUG_DIR := $(or $(CARGO_TARGET_DIR),target)/debug
demo: deps
	$(CARGO) build --workspace --bins
	WEFT_BIN=$(DEBUG_DIR)/weft WEFT_AGENT_BIN=$(DEBUG_DIR)/weft-agent WEFT_E2E_BIN=$(DEBUG_DIR)/weft-e2e \
		timeout 120 $(DEBUG_DIR)/weft-e2e demo

bench: release
	$(STATIC) $(CARGO) bench -p weft-plugin --bench cni --target $(HOST)
	@echo; echo "## NetworkPolicy control plane on a synthetic model (node-1's share), with churn"; echo
	$(CARGO) bench -q -p weft-agent --bench backends -- --churn 5 1000 100 10000 1000 10000 10000
	@echo; echo "## The same on a second model: a mix of the shapes real clusters hold"; echo
	$(CARGO) bench -q -p weft-agent --bench backends -- --churn 5 --model mix 10000 1000 10000 10000
	@echo; echo "## Data path: iperf3 and short connections, no policy vs 1000 policies in force"; echo
	$(CARGO) build -q --release --workspace --bins
	WEFT_BIN=target/release/weft WEFT_AGENT_BIN=target/release/weft-agent WEFT_E2E_BIN=target/release/weft-e2e \
		target/release/weft-e2e bench datapath --policies 1000 --secs 3
	@echo; echo "## Data path between nodes: host-gw next to the vxlan overlay, with the pods' MTU"; echo
	WEFT_BIN=target/release/weft WEFT_AGENT_BIN=target/release/weft-agent WEFT_E2E_BIN=target/release/weft-e2e \
		target/release/weft-e2e bench modes --secs 3
	@echo; echo "## What isolation from the first packet adds to CNI ADD (1000 policies select the new pods)"; echo
	WEFT_BIN=target/release/weft WEFT_AGENT_BIN=target/release/weft-agent WEFT_E2E_BIN=target/release/weft-e2e \
		target/release/weft-e2e bench add --pods 20 --policies 1000

clean:
	$(CARGO) clean
