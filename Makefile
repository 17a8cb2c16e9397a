# MASF Edge. `make test` works on a fresh machine: it builds .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
DATA ?= ../shared/data/mvtec_ad/bottle

.PHONY: venv system-deps test lint format demo bench-quality gpu-check clean

# torch goes in first, alone, so that pip never resolves a second torch: torch==2.14.1 with torchvision
# 0.29.1 is the pair that installs here (a later timm install keeps it).
$(VENV)/.torch-stamp:
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	touch $@

$(VENV)/.project-stamp: $(VENV)/.torch-stamp pyproject.toml
	$(PIP) install -q -e '.[trainer,engines,edge,genicam,plc,test,tensorrt-build]'
	touch $@

venv: $(VENV)/.project-stamp

# Debian packages the tests use: ffmpeg + rtsp-server-perl (a real RTSP camera), systemd (systemd-analyze
# verify of the unit), chromium (the operator page in a real headless browser). Installed once; a no-op
# when present.
SYSTEM_DEPS := ffmpeg rtsp-server-perl systemd chromium
system-deps:
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them (its
# module fixtures are made once); much of it waits on subprocesses, sockets and single-threaded export
# tracing, so two workers finish well before one even on two cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: venv system-deps
	$(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: venv
	$(VENV)/bin/ruff check trainer engines edge tests benchmarks
	$(VENV)/bin/ruff format --check trainer engines edge tests benchmarks
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format trainer engines edge tests benchmarks
	$(VENV)/bin/ruff check --fix trainer engines edge tests benchmarks

# Generated parts (or `make demo DATA=DIR`, any MVTec-layout folder) -> fast training -> bundle -> the
# daemon on a folder replay -> verdicts, overlays and a summary against the ground truth, in runs/demo.
demo: venv
	$(VENV)/bin/masf-edge demo --out runs/demo $(if $(filter command line environment,$(origin DATA)),--data $(DATA),)

bench-quality: venv
	$(VPY) benchmarks/quality.py

# For a machine with an NVIDIA GPU and TensorRT (not this one): needs `pip install tensorrt` (NVIDIA's
# index) or tensorrt-rtx on an RTX GPU, plus `pip install -e '.[gpu]'` (pycuda, CuPy). Trains a small run on
# $(DATA), exports it, builds the FP16 engine, compares TensorRT with ONNX Runtime, prints latency; then
# the same for the plugin spectral mode (cuFFT plugin; needs NVIDIA TensorRT >= 10.6, else skipped).
gpu-check: venv
	$(VPY) benchmarks/gpu_check.py --data $(DATA)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
