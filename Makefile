# The two commands of the README:
#   make demo   -> set up a virtualenv and run the end-to-end demo on embedded defaults
#   make test   -> set up a virtualenv (with test tools) and run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEBIAN_TOOLS := dcmtk plastimatch dicom3tools orthanc orthanc-dicomweb chromium chromium-driver postgresql
PY_DIRS := contourd daemon routing inference model_store training tests benchmarks

.PHONY: demo test lint venv debian-tools clean

$(BIN)/contourd: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(BIN)/contourd

venv: $(BIN)/contourd

demo: venv
	$(BIN)/contourd demo

# Installs DCMTK, plastimatch and dicom3tools when we may (root or passwordless
# sudo); otherwise the tests that need them skip and say how to install them.
debian-tools:
	@if command -v storescu >/dev/null && command -v plastimatch >/dev/null && command -v dciodvfy >/dev/null && command -v Orthanc >/dev/null && command -v chromedriver >/dev/null && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  true; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_TOOLS); \
	elif sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_TOOLS); \
	else \
	  echo "note: interop tests will skip; install the peers with: sudo apt-get install $(DEBIAN_TOOLS)"; \
	fi

lint: venv
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy contourd daemon routing inference model_store training

test: venv debian-tools
	$(BIN)/python -m pytest -q --durations=25

clean:
	rm -rf $(VENV) var build *.egg-info
