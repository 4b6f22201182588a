# vlm-course: the README's commands.
#   make lab     open the course in JupyterLab
#   make test    run every test and every notebook (on the tiny model, then on an idefics2-8b-shaped one)
#   make course  execute every notebook headless (outputs in build/course/)
#   make bench   run the benchmarks (vlm-course bench)
#
# Needs Python 3.10+ with venv and pip. torch is installed first, from TORCH_SPEC (a CPU build
# here); override it for another build, e.g. the CPU-only one on Linux (PyPI's default carries CUDA):
# `PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make venv TORCH_SPEC='torch==2.13.0+cpu'`.
# torch is left alone if the venv can already import it.

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= course,dev
STAMP      := $(VENV)/.vlm-course-installed
NOTEBOOKS  := $(sort $(wildcard notebooks/*.ipynb))
NB_TIMEOUT ?= 900
COURSE_OUT ?= build/course
PYTEST_ARGS ?=
# The idefics2-8b-shaped random-weight model the notebooks run on a second time (vlm_course/testmodel.py).
TEST_MODEL ?= build/test-model

.PHONY: venv lab test test-shaped course bench gpu-check help

help:
	@echo "make lab     open the course in JupyterLab"
	@echo "make test    run every test and notebook (offline)"
	@echo "make course  execute every notebook headless into $(COURSE_OUT)/"
	@echo "make bench   run the benchmarks"
	@echo "make gpu-check  on a CUDA GPU: idefics2-8b at real size, random weights (vlm-course bench --suite gpu)"
	@echo "make venv    create $(VENV) and install the package (TORCH_SPEC=$(TORCH_SPEC))"

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-run only when pyproject.toml changes (or the stamp is missing).
$(STAMP): pyproject.toml | $(PY)
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
		echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') is already installed; keeping it."; \
	else \
		echo "Installing $(TORCH_SPEC) first, so that nothing pulls another torch build."; \
		$(PY) -m pip install --disable-pip-version-check "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install --disable-pip-version-check --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

lab: venv
	$(VENV)/bin/jupyter lab $(if $(wildcard notebooks),notebooks/) $$(if [ "$$(id -u)" = 0 ]; then echo --allow-root; fi)

# The whole suite: tests/ plus every notebook through nbmake (skipped while there are none).
test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests $(if $(NOTEBOOKS),notebooks --nbmake --nbmake-timeout=$(NB_TIMEOUT)) $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-shaped

# Every notebook again with VLM_COURSE_MODEL set to a model shaped like idefics2-8b (its processor with
# image splitting, its tokenizer with BOS, 64 latents; random weights, built in seconds): the code paths
# the real model takes, on this machine.
test-shaped: venv
	@if [ -z "$(NOTEBOOKS)" ]; then echo "No notebooks in notebooks/ yet."; exit 0; fi
	HF_HUB_OFFLINE=1 $(VENV)/bin/vlm-course build-test-model --like idefics2-8b --out $(TEST_MODEL)
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE VLM_COURSE_MODEL=$(abspath $(TEST_MODEL)) \
		$(PY) -m pytest notebooks --nbmake --nbmake-timeout=$(NB_TIMEOUT) -p no:cacheprovider $(PYTEST_ARGS)

course: venv
	@if [ -z "$(NOTEBOOKS)" ]; then echo "No notebooks in notebooks/ yet."; exit 0; fi
	@mkdir -p $(COURSE_OUT)
	@n=0; total=$(words $(NOTEBOOKS)); \
	for nb in $(NOTEBOOKS); do \
		n=$$((n + 1)); echo "[$$n/$$total] executing $$nb"; \
		$(VENV)/bin/jupyter nbconvert --to notebook --execute --log-level=WARN \
			--ExecutePreprocessor.timeout=$(NB_TIMEOUT) --output-dir $(COURSE_OUT) "$$nb" || exit 1; \
	done; \
	echo "All $$total notebooks executed; outputs in $(COURSE_OUT)/"

bench: venv
	$(VENV)/bin/vlm-course bench

# On a machine with a CUDA GPU and its own torch: install the package beside that torch (plus bitsandbytes),
# then measure idefics2-8b at real size with random weights (vlm_course/gpu_check.py; under 8 minutes on an H100).
gpu-check:
	$(PYTHON) -m pip install --quiet -e . bitsandbytes
	HF_HUB_OFFLINE=1 $(PYTHON) -m vlm_course.cli bench --suite gpu
