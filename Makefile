# trustvlm-edge. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= demo_fmnist
PRECISION ?= fp32
FORMAT ?= onnx
WEIGHTS ?=
DATA ?= fashion-mnist
ARTIFACTS ?= artifacts
SITE ?= site
# ONNX Runtime flavour of the venv: cpu (onnxruntime) or gpu (onnxruntime-gpu, x86 CUDA). Exactly one
# is installed; switching flavour uninstalls both first (they overwrite each other's files).
# The flavour sticks to the venv once chosen (`make setup ORT=gpu`, then plain `make bench-gpu`).
ORT ?= $(or $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-*))),cpu)
EXTRAS_cpu := cpu,export,dev,cluster,docs
EXTRAS_gpu := gpu,trt,export,dev,cluster,docs
EXTRAS ?= $(EXTRAS_$(ORT))
STAMP := $(VENV)/.installed-$(ORT)
DEBIAN_PACKAGES := dataset-fashion-mnist opencv-doc prometheus chromium

.DEFAULT_GOAL := help
.PHONY: help setup system-packages demo demo-stream demo-recalibrate export calibrate eval serve soak bench bench-frame-path decode-gate bench-gpu gpu-check zeroshot test test-heavy test-fast demo-model models docs docs-serve clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

system-packages: ## install the Debian packages the demo and tests read (Fashion-MNIST, OpenCV sample videos, Prometheus, Chromium)
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | \
		grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@case "$(ORT)" in cpu|gpu) ;; *) echo "ORT should be cpu or gpu, but got '$(ORT)'"; exit 2;; esac
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$$(ls $(VENV)/.installed-* 2>/dev/null | grep -v -x '$(STAMP)')" ]; then \
		echo "switching the venv to ORT=$(ORT): uninstalling every onnxruntime first"; \
		$(PY) -m pip uninstall -y -q onnxruntime onnxruntime-gpu || true; fi
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m trustvlm.runtime.install_check
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $(STAMP)

setup: system-packages $(STAMP) ## create .venv with ONNX Runtime ORT=cpu|gpu and the export, test, cluster and docs extras [EXTRAS=]

demo: setup ## the main job on the embedded demo model: export, check zero-shot, calibrate (for `make serve`), then the streaming demo
	$(PY) -m trustvlm export --model demo_fmnist --precision fp16 --output $(ARTIFACTS)
	$(PY) -m trustvlm zeroshot --artifacts $(ARTIFACTS)/demo_fmnist
	$(PY) -m trustvlm calibrate --artifacts $(ARTIFACTS)/demo_fmnist
	$(MAKE) --no-print-directory demo-stream

demo-stream: setup ## streaming demo on artifacts/demo_fmnist: 3 degraded cameras each calibrated, one service, a street camera, then one shared bundle [DEMO_ARGS=]
	$(PY) -m trustvlm demo --artifacts $(ARTIFACTS)/demo_fmnist $(DEMO_ARGS)

demo-recalibrate: setup ## the low-light camera darkens: ALARM, record, label, recalibrate, swap, back to OK [DEMO_ARGS=]
	$(PY) -m trustvlm demo-recalibrate --artifacts $(ARTIFACTS)/demo_fmnist $(DEMO_ARGS)

export: setup ## export MODEL [PRECISION=fp32|fp16|int8] [FORMAT=onnx|engine] [WEIGHTS=random|/path] [TOKENIZER=/dir] [NAME=]
	$(PY) -m trustvlm export --model $(MODEL) --precision $(PRECISION) --format $(FORMAT) \
		$(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) $(if $(NAME),--name $(NAME)) \
		--output $(ARTIFACTS)

calibrate: setup ## prototype bundle + accept threshold for artifacts/MODEL [DATA=fashion-mnist|/image/folder]
	$(PY) -m trustvlm calibrate --artifacts $(ARTIFACTS)/$(MODEL) --data $(DATA) $(CALIBRATE_ARGS)

eval: setup ## evaluation table, plots and per-sample scores for artifacts/MODEL (clean + camera shifts) [DATA=folder TEST_DATA=folder]
	$(PY) -m trustvlm eval --artifacts $(ARTIFACTS)/$(MODEL) --data $(DATA) $(if $(TEST_DATA),--test-data $(TEST_DATA)) \
		$(EVAL_ARGS)

INGEST ?= tcp://127.0.0.1:5555
PUBLISH ?= tcp://127.0.0.1:5556
serve: setup ## start the streaming service on artifacts/MODEL and its bundle (INGEST=, PUBLISH= addresses)
	$(PY) -m trustvlm serve --artifacts $(ARTIFACTS)/$(MODEL) --bundle $(ARTIFACTS)/$(MODEL)/bundle \
		--ingest $(INGEST) --publish $(PUBLISH)

SOAK_SECONDS ?= 180
SOAK_RATE ?= 40
soak: setup ## bounded soak of `serve` on artifacts/MODEL: SOAK_RATE frames/s for SOAK_SECONDS; frames, outcomes, drops, RSS (not in `make test`)
	$(PY) -m trustvlm soak --artifacts $(ARTIFACTS)/$(MODEL) --bundle $(ARTIFACTS)/$(MODEL)/bundle \
		--seconds $(SOAK_SECONDS) --rate $(SOAK_RATE) --output $(ARTIFACTS)/$(MODEL)/soak.json $(SOAK_ARGS)

bench: setup ## CPU benchmarks -> BENCHMARKS.md (first run exports clip_vitb32 random-init + demo, fp32 + int8, into ARTIFACTS/bench) [BENCH_ARGS=--quick]
	$(PY) -m trustvlm.benchmarks --artifacts-root $(ARTIFACTS)/bench --output BENCHMARKS.md $(BENCH_ARGS)

bench-frame-path: setup ## the frame path alone (section 8 of BENCHMARKS.md): old path vs decode pool, 768x576 and 1920x1080 JPEG, 4 and 8 cameras, paced and flooding, on artifacts/MODEL [FRAME_PATH_ARGS]
	$(PY) -m trustvlm.benchmarks.frame_path --artifacts $(ARTIFACTS)/$(MODEL) --output $(ARTIFACTS)/$(MODEL)/frame_path.json $(FRAME_PATH_ARGS)

decode-gate: setup ## may serve decode JPEG of artifacts/MODEL at reduced scale? embeddings reduced vs full decode -> decode_gate.json
	$(PY) -m trustvlm decode-gate --artifacts $(ARTIFACTS)/$(MODEL)

bench-gpu: setup ## GPU benchmarks on a CUDA machine (first `make setup ORT=gpu`): ORT CUDA/TensorRT EPs, TensorRT engines, torch CUDA
	$(PY) -m trustvlm.benchmarks.gpu --artifacts-root $(ARTIFACTS)/bench-gpu $(BENCH_GPU_ARGS)

gpu-check: setup ## the whole GPU path in one run (GPU tests, engine builds + parity, CPU/CUDA/TensorRT agreement, soak, bench-gpu); first `make setup ORT=gpu`
	$(PY) -m trustvlm.benchmarks.gpu_check --root $(ARTIFACTS)/gpu-check $(GPU_CHECK_ARGS)

zeroshot: setup ## zero-shot accuracy of artifacts/MODEL on the Fashion-MNIST test images
	$(PY) -m trustvlm zeroshot --artifacts $(ARTIFACTS)/$(MODEL) --precision $(PRECISION)

models: setup ## list the model registry
	$(PY) -m trustvlm models

demo-model: setup ## retrain the embedded demo model (about 10 minutes on 2 cores)
	$(PY) -m trustvlm train-demo --augment flip --epochs 8 --output models/checkpoints/demo_fmnist.pt

test: setup ## run the test suite (all but the heavy registry walk)
	$(PY) -m pytest -q -m "not heavy"

test-heavy: setup ## export every large registry model with random weights (minutes each on 2 cores)
	$(PY) -m pytest -q -m heavy

test-fast: setup ## the tests without the slow exports
	$(PY) -m pytest -q -m "not slow and not heavy"

docs: setup ## build the documentation site into SITE=site/ (mkdocs build --strict: a broken link or reference fails it)
	$(PY) -m mkdocs build --strict --site-dir $(SITE)

DOCS_ADDR ?= 127.0.0.1:8000
docs-serve: setup ## serve the documentation site on DOCS_ADDR=127.0.0.1:8000, rebuilt on every change
	$(PY) -m mkdocs serve --dev-addr $(DOCS_ADDR)

clean: ## remove build outputs (artifacts/, site/), keep .venv
	rm -rf $(ARTIFACTS) $(SITE) .pytest_cache
