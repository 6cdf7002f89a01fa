# Two entry points, each making its own virtual environment in .venv:
#   make bench   installs fastconv and runs the main job
#   make test    installs fastconv with its test tools and runs the tests
# PyTorch (the cross-check peer) is installed from the CPU wheel in /opt/wheels when
# one is there; without it the torch cross-checks are skipped.

VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))

.PHONY: bench test demo install clean clean-cache

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,bench,train]"
	$(if $(TORCH),$(PY) -m pip install -q "$(TORCH)",@echo "no PyTorch CPU wheel in /opt/wheels: torch cross-checks will be skipped")
	touch $@

install: $(VENV)/.installed

bench: install
	$(PY) -m fastconv bench

# The kernel tests run a second time with Numba's bounds checking on (and a fresh
# cache, so nothing compiled without the checks is reused): no kernel may read or
# write outside its arrays.
test: install
	$(PY) -m pytest -q
	NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR="$$(mktemp -d)" $(PY) -m pytest -q tests/test_conv_kernels.py tests/test_blocked.py tests/test_rows.py tests/test_winograd.py tests/test_pool_kernels.py tests/test_activation_kernels.py

clean:
	rm -rf $(VENV) build *.egg-info

# Numba's cache checks only the source file of each cached kernel, not the helpers
# it inlines from other files (kernels/phases.py, emitter.py, _jit.py): after editing
# one of those, empty the cache before testing or timing.
clean-cache:
	find kernels -name '*.nbi' -delete -o -name '*.nbc' -delete
