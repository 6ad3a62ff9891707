# One entry point for people and CI. `.ci/run` calls `make test`, exactly as the README says.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export CONTAINERS_CONF := $(CURDIR)/molecule/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
REDFLAG_MOLECULE_IMAGE ?= localhost/redflag-debian12-systemd:latest
export REDFLAG_MOLECULE_IMAGE

APT_PACKAGES := podman runc debootstrap

.PHONY: help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: system-deps
system-deps:  ## install podman, runc and debootstrap from the distribution when missing
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing$$missing"; \
	  if command -v apt-get >/dev/null; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	  elif command -v dnf >/dev/null; then dnf install -y -q podman runc debootstrap; \
	  else echo "!! install $$missing with your package manager, then re-run" >&2; exit 1; fi; \
	fi

$(BIN)/.installed: pyproject.toml
	@echo ">> creating $(VENV) with the dev tools"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

.PHONY: venv
venv: $(BIN)/.installed  ## create the virtual environment with the dev tools

.PHONY: image
image: system-deps  ## build the local Debian 12 systemd test image (cached)
	bash molecule/images/build-debian.sh

.PHONY: zipapp
zipapp:  ## build dist/redflag-agent-<version>.pyz and its sha256
	$(PYTHON) agent_src/build_zipapp.py

.PHONY: lint
lint: venv  ## ruff, yamllint, ansible-lint
	$(BIN)/ruff check .
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint

.PHONY: unit
unit: venv  ## pytest: agent, stand-in server, role checks
	$(BIN)/python -m pytest

.PHONY: molecule
molecule: venv image  ## every Molecule scenario on systemd containers
	bash molecule/run-all.sh

.PHONY: test
test: lint unit molecule  ## everything CI runs

.PHONY: prove
prove: venv  ## property suite, long profile: more generated host states (count and time at the end)
	HYPOTHESIS_PROFILE=prove $(BIN)/python -m pytest tests/property -q --hypothesis-show-statistics

# Decision code under mutation testing. The role's enrollment module is named once, here.
ENROLL_MODULE ?= plugins/modules/redflag_agent_config.py
MUTATE_FILES := $(addprefix agent_src/redflag_agent/migration/,decide.py merge.py state.py executor.py backup.py) \
	$(addprefix agent_src/redflag_agent/,registration.py config.py runner.py backoff.py checkin.py) \
	$(ENROLL_MODULE)
FILES ?= $(MUTATE_FILES)
MUTATE_MIN ?= 90
MUTATE_JOBS ?= 2

.PHONY: mutate
mutate: venv  ## mutation testing of the decision code (FILES=... to restrict); not part of test
	$(BIN)/python tests/mutation/run.py --jobs $(MUTATE_JOBS) --min-score $(MUTATE_MIN) $(FILES)

.PHONY: demo
demo: venv system-deps  ## stand-in server + 3-host demo fleet, rolled out by playbooks/site.yml
	bash demo/demo.sh

.PHONY: demo-clean
demo-clean:  ## remove every container, image, process and file the demo made
	bash demo/clean.sh

.PHONY: bench
bench: venv image  ## benchmarks: rollout, re-run, agent start-up, registration storm
	@# 20 systemd containers need more inotify instances than the default 128.
	@if [ "$$(sysctl -n fs.inotify.max_user_instances)" -lt 1024 ]; then sysctl -qw fs.inotify.max_user_instances=1024; fi
	$(BIN)/python bench/run_all.py

.PHONY: clean
clean:  ## remove build output (not the venv)
	rm -rf dist build mutants .pytest_cache .ruff_cache

.PHONY: sanity
sanity: venv  ## ansible-test sanity over the built collection (tests/sanity/run.sh)
	REDFLAG_VENV_BIN=$(CURDIR)/$(BIN) bash tests/sanity/run.sh

# `make test` runs the sanity tests too (after lint, unit and molecule).
test: sanity
