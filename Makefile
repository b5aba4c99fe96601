# facestream — set-up, build, run, test, bench.
#   make run     set up, then run the main job on the embedded default configuration
#   make test    set up, then run every test
#   make setup   Debian packages + ONNX Runtime + models (idempotent, cached in ~/.cache/facestream)
#   make setup GPU=1   the same with the CUDA build of ONNX Runtime (NVIDIA machines)
#   make lint    clippy with warnings as errors (also run by CI)
#   make soak    10-minute reliability harness (RSS, fds, threads, reconnects, /healthz)
#   make bench   criterion benchmarks, the end-to-end harness and the gallery benchmark
#   make fuzz    every cargo-fuzz target (fuzz/) for FUZZ_SECONDS (60) each; fails on a crash
#   make fuzz-smoke   the same, 10 s per target (also run by CI)

SHELL := /bin/bash
GPU ?= 0
CARGO ?= cargo
CACHE ?= $(or $(FACESTREAM_CACHE),$(HOME)/.cache/facestream)
export FACESTREAM_CACHE := $(CACHE)

APT_PACKAGES := pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
	gstreamer1.0-libav libopencv-dev clang libclang-dev fonts-dejavu-core

# Servers the tests start on 127.0.0.1 (a real Prometheus, a real MQTT broker, PostgreSQL and a
# NATS server with JetStream for the cluster tests), and the
# headless browser the web UI's tests drive over WebDriver.
APT_TEST_PACKAGES := prometheus mosquitto chromium chromium-driver postgresql nats-server

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FETCH_FLAGS := $(if $(filter 1,$(GPU)),--gpu,)

.PHONY: setup deps test-deps models build run demo test lint bench soak check-toolchain fuzz fuzz-smoke fuzz-seeds fuzz-tools

setup: deps models

check-toolchain:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found. Install Rust >= 1.92 (rustup) and rerun." >&2; exit 1; }
	@command -v python3 >/dev/null || { echo "error: python3 not found (needed to fetch and convert the models)." >&2; exit 1; }

# Installs only what is missing, so a second run costs one dpkg query.
deps: check-toolchain
	@if ! command -v apt-get >/dev/null; then \
		missing=""; pkg-config --exists gstreamer-1.0 gstreamer-app-1.0 gstreamer-video-1.0 opencv4 || missing=1; \
		if [ -n "$$missing" ]; then echo "error: not a Debian/Ubuntu system: install GStreamer 1.22+ (base, good, bad, ugly, libav, rtsp-server dev files), OpenCV 4 dev files, clang and libclang by hand, then rerun." >&2; exit 1; fi; \
	else \
		missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null | awk '$$NF=="installed"{print $$1}' | sort | comm -13 - <(printf '%s\n' $(APT_PACKAGES) | sort)); \
		extra=""; python3 -m venv --help >/dev/null 2>&1 || extra="python3-venv"; command -v npm >/dev/null || extra="$$extra npm"; \
		if [ -n "$$missing$$extra" ]; then \
			echo "installing Debian packages: $$missing $$extra"; \
			$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing $$extra; \
		else echo "Debian packages: all present"; fi; \
	fi

models: check-toolchain
	python3 models/fetch.py $(FETCH_FLAGS)

build: setup
	$(CARGO) build --release --locked

# `make run` plays the embedded default (config/default.toml): a fixture clip against a fixture
# gallery, identity events as JSON lines. `make demo` shows detection and comparison on photos.
run: build
	./target/release/facestream run

demo: build
	./target/release/facestream demo

test-deps:
	@if command -v apt-get >/dev/null; then \
		missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_TEST_PACKAGES) 2>/dev/null | awk '$$NF=="installed"{print $$1}' | sort | comm -13 - <(printf '%s\n' $(APT_TEST_PACKAGES) | sort)); \
		if [ -n "$$missing" ]; then \
			echo "installing test servers: $$missing"; \
			$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
		fi; \
	else \
		for p in prometheus mosquitto chromium chromedriver nats-server initdb; do command -v $$p >/dev/null || { echo "error: the tests need $$p on PATH" >&2; exit 1; }; done; \
	fi

test: setup test-deps
	$(CARGO) test --release --locked

# House rules as lints (clippy.toml bans unbounded channels); warnings are errors.
lint: setup
	$(CARGO) clippy --release --all-targets --locked -- -D warnings

# Micro-benchmarks, then the end-to-end harness (figures and how to read them: BENCHMARKS.md).
bench: build
	$(CARGO) bench --locked
	./target/release/facestream --log warn bench --mode throughput --cameras 1,2 --loops 2 --json target/bench-throughput.json
	./target/release/facestream --log warn bench --mode capacity --cameras 1,2,4,5,6 --duration 12 --json target/bench-capacity.json
	./target/release/facestream --log warn bench-gallery --sizes 10000,100000 --samples 3 --ef 16,32,64,128 --json target/bench-gallery.json

# Reliability harness: 10 minutes of 3 file cameras + 1 RTSP camera restarted every 20 s, 20 API
# req/s, 10 event-stream clients that never read; CSV and PNG in target/soak.
soak: build
	./target/release/facestream --log warn soak --duration 600 --cameras 3 --restart-every 20 --api-rps 20 --sse-clients 10 --out target/soak

# Fuzzing (fuzz/: cargo-fuzz + libFuzzer, nightly, AddressSanitizer, debug assertions). Each target
# replays fuzz/regressions/<target>/, then runs FUZZ_SECONDS from the seed corpus in
# fuzz/corpus/<target>/; new inputs collect in fuzz/work/ and crashes in fuzz/artifacts/ (both
# ignored). cargo-fuzz is installed once into ~/.cargo/bin. FUZZ_KEEP_GOING=1: go on after a crash.
FUZZ_SECONDS ?= 60
FUZZ_TOOLCHAIN ?= nightly

fuzz-tools: check-toolchain
	@rustup run $(FUZZ_TOOLCHAIN) rustc --version >/dev/null 2>&1 || rustup toolchain install $(FUZZ_TOOLCHAIN) --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

fuzz: deps fuzz-tools
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TOOLCHAIN=$(FUZZ_TOOLCHAIN) fuzz/run.sh run

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=10

# Rewrites the generated seeds (tiny synthetic images, real HNSW dumps, signed envelopes).
fuzz-seeds: deps fuzz-tools
	FUZZ_TOOLCHAIN=$(FUZZ_TOOLCHAIN) fuzz/run.sh seeds
