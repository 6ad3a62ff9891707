"""The collection as users get it: the artifact's contents, one version source, an installed
collection that builds the agent with no checkout around it, and the execution environment.

The artifact is built and installed once per session (a few seconds, no network: the one
dependency, community.general, is already in the Python environment).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())
VERSION = str(GALAXY["version"])
DEFAULTS = yaml.safe_load((REPO / "roles/redflag_agent/defaults/main.yml").read_text())

# Dev-only trees and files that must stay out of the artifact (top level, or a path prefix).
NOT_SHIPPED = (
    "tests/", "molecule/", ".venv/", "dist/", "build/", "bench/", "demo/", ".collections/",
    ".ci/", ".config/", ".git", "agent_src/redflag_devserver/", "Makefile", "pyproject.toml",
    "ansible.cfg", "execution-environment.yml", ".ansible-lint", ".yamllint",
)
SHIPPED = (
    "MANIFEST.json", "FILES.json", "README.md", "LICENSE", "CHANGELOG.md", "meta/runtime.yml",
    "agent_src/build_zipapp.py", "agent_src/redflag_agent/__main__.py",
    "agent_src/redflag_agent/version.py", "roles/redflag_agent/tasks/main.yml",
    "roles/redflag_agent/defaults/main.yml", "roles/redflag_agent/meta/argument_specs.yml",
    "plugins/modules/redflag_agent_config.py", "playbooks/site.yml", "playbooks/install.yml",
    "playbooks/uninstall.yml", "playbooks/status.yml",
)


def _env(tmp: Path) -> dict[str, str]:
    """Ansible's defaults, not the checkout's ansible.cfg: its collections_path holds the
    .collections link, where ansible-galaxy would find redflag.agent "already installed"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return {
        **env,
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }


def _run(argv: list[str], tmp: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=kw.pop("env", _env(tmp)),
                          cwd=kw.pop("cwd", tmp), timeout=300, check=False, **kw)


@pytest.fixture(scope="session")
def artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifact")
    res = _run([str(BIN / "ansible-galaxy"), "collection", "build", str(REPO),
                "--output-path", str(out)], out)
    assert res.returncode == 0, res.stdout + res.stderr
    (path,) = out.glob("redflag-agent-*.tar.gz")
    return path


@pytest.fixture(scope="session")
def installed(artifact, tmp_path_factory) -> Path:
    """The artifact installed offline into an empty collections path."""
    root = tmp_path_factory.mktemp("collections")
    # --force: a copy elsewhere on the default search path would otherwise make it skip
    res = _run([str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "--force",
                "--collections-path", str(root), str(artifact)], root)
    assert res.returncode == 0, res.stdout + res.stderr
    path = root / "ansible_collections" / "redflag" / "agent"
    assert (path / "MANIFEST.json").is_file(), res.stdout + res.stderr
    return path


def _names(artifact: Path) -> list[str]:
    with tarfile.open(artifact) as tar:
        return [m.name + ("/" if m.isdir() else "") for m in tar.getmembers()]


# --- one version source -------------------------------------------------------------------

def test_agent_version_repeats_galaxy_version():
    text = (REPO / "agent_src/redflag_agent/version.py").read_text()
    assert re.search(rf'^AGENT_VERSION = "{re.escape(VERSION)}"$', text, re.MULTILINE), (
        f"galaxy.yml says {VERSION}; set AGENT_VERSION in version.py to it (docs/RELEASING.md)"
    )


def test_python_package_version_comes_from_version_py():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "redflag_agent.version.AGENT_VERSION"
    }


def test_galaxy_version_is_released_or_pending_in_the_changelog():
    changes = yaml.safe_load((REPO / "changelogs/changelog.yaml").read_text())
    fragments = list((REPO / "changelogs/fragments").glob("*.y*ml"))
    assert VERSION in changes["releases"] or fragments, (
        f"galaxy.yml's {VERSION} is not in changelogs/changelog.yaml and no fragment waits"
    )


def _tree(tmp: Path, galaxy_version: str | None, manifest_version: str | None) -> Path:
    root = tmp / "tree"
    shutil.copytree(REPO / "agent_src", root / "agent_src",
                    ignore=shutil.ignore_patterns("__pycache__", "redflag_devserver"))
    if galaxy_version is not None:
        (root / "galaxy.yml").write_text(f"namespace: redflag\nversion: {galaxy_version}\n")
    if manifest_version is not None:
        (root / "MANIFEST.json").write_text(
            json.dumps({"collection_info": {"version": manifest_version}}))
    return root


@pytest.mark.parametrize(
    ("galaxy_version", "manifest_version", "refused_by"),
    [
        (VERSION, None, None),
        ("9.9.9", None, "galaxy.yml says version '9.9.9'"),
        (None, VERSION, None),
        (None, "9.9.9", "MANIFEST.json says version '9.9.9'"),
        ("'9.9.9'  # quoted", None, "galaxy.yml says version '9.9.9'"),
        (None, None, None),  # a bare copy of agent_src (molecule/canary does that)
    ],
)
def test_build_refuses_while_versions_differ(tmp_path, galaxy_version, manifest_version,
                                             refused_by):
    root = _tree(tmp_path, galaxy_version, manifest_version)
    out = tmp_path / "out"
    # --version does not skip the check: the tree itself is inconsistent.
    res = _run([sys.executable, str(root / "agent_src/build_zipapp.py"), "--out", str(out),
                "--version", "1.2.3"], tmp_path)
    if refused_by is None:
        assert res.returncode == 0, res.stderr
        assert (out / "redflag-agent-1.2.3.pyz").is_file()
    else:
        assert res.returncode == 2
        assert refused_by in res.stderr
        assert f"AGENT_VERSION = '{VERSION}'" in res.stderr
        assert "docs/RELEASING.md" in res.stderr
        assert "Traceback" not in res.stderr
        assert not out.exists()


# --- the artifact ---------------------------------------------------------------------------

def test_artifact_named_after_galaxy_version(artifact):
    assert artifact.name == f"redflag-agent-{VERSION}.tar.gz"


def test_artifact_ships_what_an_installed_collection_needs(artifact):
    names = _names(artifact)
    missing = [n for n in SHIPPED if n not in names]
    assert not missing, missing


def test_artifact_leaves_dev_trees_out(artifact):
    names = _names(artifact)
    leaked = sorted(n for n in names for bad in NOT_SHIPPED
                    if n == bad or n.startswith(bad) or n == bad + "/")
    assert not leaked, leaked
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyz"))]


def test_manifest_carries_version_and_dependency(artifact):
    with tarfile.open(artifact) as tar:
        manifest = json.load(tar.extractfile("MANIFEST.json"))
        files = json.load(tar.extractfile("FILES.json"))
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == ("redflag", "agent", VERSION)
    assert info["dependencies"] == {"community.general": ">=8.0.0"}
    assert "agent_src/redflag_agent/cli.py" in {f["name"] for f in files["files"]}


# --- an installed collection is self-contained ----------------------------------------------

def test_installed_collection_builds_the_same_zipapp(installed, tmp_path):
    """No checkout around it: the installed agent_src builds, byte-identical to the checkout's."""
    runs = {}
    for name, src in (("installed", installed / "agent_src"), ("checkout", REPO / "agent_src")):
        res = _run([sys.executable, str(src / "build_zipapp.py"), "--out", str(tmp_path / name)],
                   tmp_path, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        runs[name] = (tmp_path / name / f"redflag-agent-{VERSION}.pyz").read_bytes()
    assert runs["installed"] == runs["checkout"]
    assert not list(installed.rglob("__pycache__")), "the build wrote into the collection"


def _render_build_dir(tmp: Path, role_path: Path, cache_home: str | None) -> str:
    """redflag_agent_build_dir as the role's defaults render it for a role at role_path."""
    playbook = tmp / "render.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False,
        "vars": {"role_path": str(role_path),
                 "redflag_agent_source_dir": DEFAULTS["redflag_agent_source_dir"],
                 "redflag_agent_build_dir": DEFAULTS["redflag_agent_build_dir"]},
        "tasks": [{"ansible.builtin.debug": {"msg": "BUILD_DIR={{ redflag_agent_build_dir }}"}}],
    }]))
    env = _env(tmp)
    env.pop("XDG_CACHE_HOME", None)
    env["HOME"] = str(tmp / "home")
    if cache_home is not None:
        env["XDG_CACHE_HOME"] = cache_home
    res = _run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
               tmp, env=env, cwd=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    return re.search(r"BUILD_DIR=(\S+?)\"?$", res.stdout, re.MULTILINE).group(1)


def test_default_build_dir_is_a_per_user_cache_outside_the_collection(installed, tmp_path):
    role = installed / "roles" / "redflag_agent"
    key = hashlib.sha1(os.path.realpath(installed / "agent_src").encode()).hexdigest()[:12]  # noqa: S324
    assert _render_build_dir(tmp_path, role, None) == f"{tmp_path}/home/.cache/redflag.agent/{key}"
    assert _render_build_dir(tmp_path, role, "/xdg") == f"/xdg/redflag.agent/{key}"
    # Another tree (the checkout) gets its own directory: no overwriting mid-play.
    other = _render_build_dir(tmp_path, REPO / "roles" / "redflag_agent", "/xdg")
    assert other.startswith("/xdg/redflag.agent/")
    assert other != f"/xdg/redflag.agent/{key}"


# --- execution environment ------------------------------------------------------------------

def test_ansible_builder_create_renders_the_context(artifact, tmp_path):
    """`ansible-builder create` writes the build context without pulling anything."""
    shutil.copy(REPO / "execution-environment.yml", tmp_path)
    (tmp_path / "build").mkdir()
    shutil.copy(artifact, tmp_path / "build")
    start = time.monotonic()
    res = _run([str(BIN / "ansible-builder"), "create", "-f",
                str(tmp_path / "execution-environment.yml"), "-c", str(tmp_path / "context")],
               tmp_path, cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"ansible-builder create: {elapsed:.2f} s")
    context = tmp_path / "context"
    shipped = context / "_build" / "collections" / artifact.name
    assert shipped.read_bytes() == artifact.read_bytes()
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert {"name": "community.general", "version": ">=8.0.0"} in requirements["collections"]
    containerfile = (context / "Containerfile").read_text()
    assert re.search(r'^ARG PYCMD="/usr/bin/python3\.\d+"$', containerfile, re.MULTILINE)
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core>=2.19,<2.20 ansible-runner"' in containerfile
    install = re.search(r"^RUN ansible-galaxy collection install .*--offline.*"
                        r"/build/collections/redflag-agent-\*\.tar\.gz$",
                        containerfile, re.MULTILINE)
    assert install, "the collection is not installed in the galaxy stage"
    galaxy_stage = containerfile.split("FROM base AS galaxy")[1].split("FROM base AS builder")[0]
    assert install.group(0) in galaxy_stage
