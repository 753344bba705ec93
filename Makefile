# Two entry points do all set-up on a fresh machine:
#   make demo   -> virtual environment, pinned CPU torch (or the torch you already have), the project, a demo run
#   make test   -> the same set-up, then the test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
# torchvision pins exactly one torch: 0.28.0 goes with 2.13.0. Installed in the same pip call,
# so pip never resolves a second torch for it.
TORCHVISION_PIN ?= torchvision==0.28.0
# An extra index asked for the pins above (for example PyTorch's CPU index, whose +cpu torchvision
# matches a CPU torch); empty by default, since only PyPI is reachable on our machines. PyPI's
# torchvision next to a CPU torch imports through encoders/torchvision_compat.py.
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The versions of everything but torch/torchvision that the suite last passed with (`make lock`
# writes it). Set-up installs exactly these, so an upstream release cannot change what CI runs;
# pyproject keeps open ranges for `pip install aam-search`. `make setup CONSTRAINTS=` lifts it.
CONSTRAINTS ?= constraints.txt
CONSTRAIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
DEMO_DIR ?= work/demo

.PHONY: setup demo test lock clean

setup: $(VENV)/.installed

# A torch already importable by $(PYTHON) (say a CUDA build on a GPU machine) is kept by
# letting the venv see the system site-packages; otherwise the pinned CPU wheel is installed,
# so pip never resolves a bare `torch` to several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
		echo "keeping the torch of $(PYTHON): $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" >/dev/null 2>&1 || \
		$(PIP) install -q $(if $(TORCH_INDEX),--extra-index-url "$(TORCH_INDEX)") "$(TORCH_PIN)" "$(TORCHVISION_PIN)"
	# A kept torch gets the torchvision built for it, or none: never a torch replaced for torchvision.
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)" || \
		$(PIP) install -q torchvision "torch==$$($(PY) -c 'import torch; print(torch.__version__)')" || \
		echo "no torchvision matches this torch: the torchvision encoders (r3d_18, ...) are unavailable"
	$(PIP) install -q $(CONSTRAIN) -e ".[dev,transformers]"
	# DeepSpeed ships only an sdist: build it against the torch above, never an isolated one.
	$(PIP) install -q --no-build-isolation $(CONSTRAIN) "deepspeed>=0.14"
	@touch $@

demo: setup
	$(VENV)/bin/aam-search demo --workdir $(DEMO_DIR)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Refresh the constraints: build a venv of the newest releases (`rm -rf $(VENV) && make setup
# CONSTRAINTS=`), pass `make test`, then lock. torch and torchvision stay the Makefile's pins
# above; what a CUDA torch brings (nvidia-*, triton) and a kept system torch's site-packages
# (--local) are left out.
lock:
	$(PIP) freeze --local --exclude-editable | grep -v -i -E '^(torch|torchvision|nvidia-.*|triton|pyflakes)==' > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) work
