"""The zipapp: byte-reproducible, version stamp, only the agent, runs with -I outside the repo."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "agent_src" / "build_zipapp.py"
PY39 = Path("/root/.pyenv/versions/3.9.18/bin/python3")
INTERPRETERS = [sys.executable] + ([str(PY39)] if PY39.exists() else [])


def build(out: Path, *args: str) -> Path:
    res = subprocess.run([sys.executable, str(BUILDER), "--out", str(out), *args],
                         capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.split()[0])


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("dist"))


def test_two_builds_are_byte_identical(tmp_path, pyz):
    again = build(tmp_path)
    assert again.name == pyz.name == "redflag-agent-0.2.0.pyz"
    assert again.read_bytes() == pyz.read_bytes()
    digest = hashlib.sha256(pyz.read_bytes()).hexdigest()
    assert (pyz.parent / f"{pyz.name}.sha256").read_text() == f"{digest}  {pyz.name}\n"


def test_contains_only_the_agent(pyz):
    names = zipfile.ZipFile(pyz).namelist()
    assert names == sorted(names)
    assert "__main__.py" in names and "redflag_agent/cli.py" in names
    assert "redflag_agent/migration/__init__.py" in names
    assert all(n in ("__main__.py", "__main__.pyc") or n.startswith("redflag_agent/")
               for n in names)
    assert not any("__pycache__" in n for n in names)
    pycs = [n for n in names if n.endswith(".pyc")]
    assert pycs and all(n[:-1] in names for n in pycs), "each .pyc sits beside its source"


@pytest.mark.parametrize("python", INTERPRETERS)
def test_bytecode_used_by_build_python_and_source_fallback_elsewhere(tmp_path, pyz, python):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import redflag_agent.config as c; "
            "print(c.__file__)")
    res = subprocess.run([python, "-I", "-c", code, str(pyz)], cwd=tmp_path, capture_output=True,
                         text=True, check=False, timeout=30)
    assert res.returncode == 0, res.stderr
    same = Path(python).resolve() == Path(sys.executable).resolve()
    assert res.stdout.strip().endswith(".pyc" if same else ".py")


def test_invalid_version_is_refused(tmp_path):
    res = subprocess.run([sys.executable, str(BUILDER), "--out", str(tmp_path), "--version",
                          "../x"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "invalid --version" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("python", INTERPRETERS)
def test_runs_isolated_outside_the_repo(tmp_path, pyz, python):
    stamped = build(tmp_path / "b", "--version", "9.9.9")
    env = {"PATH": "/usr/bin:/bin", "REDFLAG_ROOT": str(tmp_path / "root")}
    for archive, expect in ((pyz, "0.2.0"), (stamped, "9.9.9")):
        res = subprocess.run([python, "-I", str(archive), "version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=False, timeout=30)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == expect
    status = subprocess.run([python, "-I", str(stamped), "status", "--json"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, check=False, timeout=30)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["agent_version"] == "9.9.9"
    run = subprocess.run([python, "-I", str(pyz), "run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False, timeout=30)
    assert run.returncode == 78 and "no config at" in run.stderr
    assert not (tmp_path / "root").exists()
