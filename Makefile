# The two commands a new user needs:  make demo  |  make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0 is pinned so pip takes the CPU wheel where one is on disk; on a GPU box install a CUDA build first.
TORCH  ?= torch==2.13.0

.PHONY: setup tools demo test test-slow bench soak screenshots lint clean

$(BIN)/stream-rec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(BIN)/stream-rec  ## create .venv and install stream-rec with its test tools

demo: setup  ## embedded broker + worker + synthetic producer + live tail (Ctrl-C stops all)
	$(BIN)/stream-rec demo

tools:  ## non-Python test tools: promtool + prometheus (Debian package, installed when root + apt-get)
	bash deploy/ensure-test-tools.sh

test: setup tools  ## the default test run (real embedded broker, small generated data)
	$(BIN)/python -m pytest -q

test-slow: setup tools  ## slow tests and benchmarks: crash/rebalance/fuzz at scale
	$(BIN)/python -m pytest -q -m slow

bench: setup  ## throughput/latency benchmark against an embedded broker
	$(BIN)/stream-rec bench

soak: setup  ## 300,000 events offered at 2,500 ev/s to one worker: must drain, nothing lost; prints RSS over the run
	$(BIN)/python benchmarks/soak.py

screenshots: setup tools  ## docs/img/: the worker's pages (ui-*.png) and the dashboard preview, from a real demo run
	$(BIN)/python deploy/screenshots.py --out docs/img

clean:
	rm -rf var runs .pytest_cache
