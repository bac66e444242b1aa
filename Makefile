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

.PHONY: all deps fuzz-deps build release lint test fuzz fuzz-short demo bench clean

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
# before the kernel suites. Then every fuzz target for 12 s (fuzz-short,
# below): a crash stops the run there too. The e2e tests drive the built
# binaries (weft, weft-ipam, weft-agent) the way a cluster does, so every
# binary is built before the rest runs.
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
	@rm -f $(SKIP_LOG)
	@$(MAKE) --no-print-directory fuzz-short
	$(CARGO) build --workspace --bins
	@status=0; \
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
# the pod socket's requests, NFLOG datagrams. They build against weft-agent
# without its `daemon` feature (the policy library alone: 66 crates, not 228).
# The corpus grows in fuzz/corpus/<target>, seeded from fuzz/seeds/<target>;
# a crash fails the run and leaves its input in fuzz/artifacts/<target>/
# (fuzz/run.sh runs them). A crash found becomes a regression test in the
# crate that owns the parser (docs/testing.md).
FUZZ_TARGETS := cni_config cni_env manifest pod_socket nflog
FUZZ_HOST := $(or $(HOST),x86_64-unknown-linux-gnu)

# The nightly toolchain and cargo-fuzz, installed once (cargo-fuzz lands in
# ~/.cargo/bin and is reused by every later run).
fuzz-deps:
	@if command -v rustup >/dev/null && ! rustup toolchain list | grep -q '^nightly'; then \
		rustup toolchain install nightly --profile minimal; \
	fi
	@$(CARGO) +nightly --version >/dev/null
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

# `make fuzz`: the long run, each target FUZZ_SECS (5 min) with AddressSanitizer.
FUZZ_SECS ?= 300
fuzz: fuzz-deps
	cd fuzz && $(CARGO) +nightly fuzz build
	fuzz/run.sh $(CURDIR)/fuzz/target/$(FUZZ_HOST)/release $(FUZZ_SECS) 1 $(FUZZ_TARGETS)

# `make test`'s short run: each target FUZZ_SHORT_SECS (12 s), two at once
# (one per core). Built without a sanitizer (the parsers are safe Rust: a
# panic, an overflow, a hang or running out of memory is what it finds) and
# with 16 codegen units, in a target dir of its own: 130 CPU-seconds from a
# clean checkout (ASan's build: 193; against the whole agent: about 840),
# then 63 s to run (docs/testing.md). Without a nightly toolchain it is a
# skip (SKIPPED: in SKIP_LOG), which fails the run under CI=true.
FUZZ_SHORT_SECS ?= 12
fuzz-short:
	@if ! $(MAKE) --no-print-directory fuzz-deps; then \
		echo "SKIPPED: fuzz: no nightly toolchain or cargo-fuzz to build the fuzz targets" | tee -a $(SKIP_LOG); \
	else \
		(cd fuzz && $(CARGO) +nightly fuzz build -s none --codegen-units 16 --target-dir target/short) && \
		fuzz/run.sh $(CURDIR)/fuzz/target/short/$(FUZZ_HOST)/release $(FUZZ_SHORT_SECS) 2 $(FUZZ_TARGETS); \
	fi

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
	@echo; echo "## ClusterNetworkPolicy control plane: 10 CNPs at 1k pods and at 10k pods, 1000 CNPs at 10k pods (compiled, too big to render)"; echo
	$(CARGO) bench -q -p weft-agent --bench backends -- --cnp 10 1000 100
	$(CARGO) bench -q -p weft-agent --bench backends -- --cnp 10 10000 10000
	$(CARGO) bench -q -p weft-agent --bench backends -- --cnp 1000 10000 10000
	@echo; echo "## Data path: iperf3 and short connections, no policy vs 1000 policies vs 1000 CNPs in force, in IPv4 and IPv6"; echo
	$(CARGO) build -q --release --workspace --bins
	WEFT_BIN=target/release/weft WEFT_AGENT_BIN=target/release/weft-agent WEFT_E2E_BIN=target/release/weft-e2e \
		target/release/weft-e2e bench datapath --policies 1000 --cnps 1000 --secs 3
	@echo; echo "## Data path between nodes: host-gw next to the vxlan overlay, with the pods' MTU"; echo
	WEFT_BIN=target/release/weft WEFT_AGENT_BIN=target/release/weft-agent WEFT_E2E_BIN=target/release/weft-e2e \
		target/release/weft-e2e bench modes --secs 3
	@echo; echo "## What isolation from the first packet adds to CNI ADD (1000 policies select the new pods)"; echo
	WEFT_BIN=target/release/weft WEFT_AGENT_BIN=target/release/weft-agent WEFT_E2E_BIN=target/release/weft-e2e \
		target/release/weft-e2e bench add --pods 20 --policies 1000
	@echo; echo "## A denied pod's SYN flood, 20k/s for 20 s: CNI ADD on its node and the agent's RSS"; echo
	WEFT_BIN=target/release/weft WEFT_AGENT_BIN=target/release/weft-agent WEFT_E2E_BIN=target/release/weft-e2e \
		target/release/weft-e2e bench flood --rate 20000 --secs 20 --after 10

clean:
	$(CARGO) clean
