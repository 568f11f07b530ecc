# The whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: demo test install clean readme-figures

$(BIN)/brainprop: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/brainprop

install: $(BIN)/brainprop

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

# The README's figures (docs/figures/*.png) from a demo run; see docs/figures.md.
readme-figures: demo
	$(BIN)/python docs/figures/update.py results/demo/figures docs/figures

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

clean:
	rm -rf results .snakemake
