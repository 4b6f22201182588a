# vlm-course: the README's commands.
#   make lab     open the course in JupyterLab
#   make test    run every test and every notebook
#   make course  execute every notebook headless (outputs in build/course/)
#   make bench   run the benchmarks (vlm-course bench)
#
# Needs Python 3.10+ with venv and pip. torch is installed first, from TORCH_SPEC (a CPU build
# here); override it for another build, e.g. `make venv TORCH_SPEC='torch==2.13.0'` with your
# own pip index settings. torch is left alone if the venv can already import it.

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= course,dev,quant,widgets,serve,ray
STAMP      := $(VENV)/.vlm-course-installed
NOTEBOOKS  := $(sort $(wildcard notebooks/*.ipynb))
NB_TIMEOUT ?= 900
COURSE_OUT ?= build/course
PYTEST_ARGS ?=

.PHONY: venv lab test course bench help

help:
	@echo "make lab     open the course in JupyterLab"
	@echo "make test    run every test and notebook (offline)"
	@echo "make course  execute every notebook headless into $(COURSE_OUT)/"
	@echo "make bench   run the benchmarks"
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
