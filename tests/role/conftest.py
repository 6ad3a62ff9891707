"""Shared helpers for the role's tests: paths and loading the role's Python files."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "redflag_agent"
PLAYBOOKS = REPO / "playbooks"
# The collection's plugins (the repository root is the collection root).
MODULES = REPO / "plugins" / "modules"
FILTERS = REPO / "plugins" / "filter"
# The modules import module_utils as ansible_collections.redflag.agent.plugins.module_utils.*:
# .collections/ansible_collections/redflag/agent links back to this checkout, so that
# directory on sys.path resolves them here (namespace packages; ansible's collection loader
# is never installed in the test process), and on PYTHONPATH for modules run as scripts.
COLLECTIONS = REPO / ".collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(COLLECTIONS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


def load_source(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path):
    # Vault-tagged scalars are kept as their ciphertext; the tests never decrypt.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!vault", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass


@pytest.fixture(scope="session")
def config_module() -> ModuleType:
    return load_source("redflag_agent_config", MODULES / "redflag_agent_config.py")


@pytest.fixture(scope="session")
def service_module() -> ModuleType:
    return load_source("redflag_agent_service", MODULES / "redflag_agent_service.py")


@pytest.fixture(scope="session")
def fleet_filters() -> ModuleType:
    return load_source("redflag_fleet", FILTERS / "redflag_fleet.py")


@pytest.fixture(scope="session")
def host_module() -> ModuleType:
    return load_source("redflag_agent_host", MODULES / "redflag_agent_host.py")


@pytest.fixture(scope="session")
def version_module() -> ModuleType:
    return load_source("redflag_agent_version", MODULES / "redflag_agent_version.py")
