"""Shared by every scenario's testinfra tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parent / "shared"))

import rfcheck  # noqa: E402


@pytest.fixture
def host(host):
    """The same test host, reached with `podman exec` on its container directly.

    Testinfra's ansible backend does not map Ansible's podman connection and falls
    back to one ansible run per command (about a second each); this keeps verify fast.
    """
    backend = host.backend
    if getattr(backend, "NAME", "") == "ansible":
        hostvars = backend.ansible_runner.inventory["_meta"]["hostvars"].get(backend.host, {})
        if hostvars.get("ansible_connection") in ("podman", "containers.podman.podman"):
            return testinfra.get_host("podman://" + rfcheck.container(backend.host))
    return host
