"""Mutation testing of the decision code with mutmut 3, file by file, and a score table.

    python tests/mutation/run.py [--jobs N] [--min-score 90] [--report-only] [--diffs] FILE...

mutmut 3 names a mutant after its module path relative to the run directory (with a leading
`src.` stripped) and only counts a test as covering a function when the *runtime* module name
matches. Our tests import `redflag_agent.*` from agent_src/ (tests/conftest.py puts it on
sys.path) and load the role's modules by file path under a bare name, so mutmut cannot run
from the repository root. This script lays out a staging tree instead (build/mutation/):

    build/mutation/src -> ../../agent_src          mutated as src/redflag_agent/...
    build/mutation/tests -> ../../tests            mutmut copies it into mutants/tests
    build/mutation/<name>.py -> the module file    a module the tests load by path
    build/mutation/pyproject.toml                  ours plus a generated [tool.mutmut]

and, inside mutants/, agent_src -> src (so tests/conftest.py and the PYTHONPATH it gives
subprocesses both reach the mutated copy) and a symlink for every other top-level entry.

Tests are chosen per file (SELECTION below). Tests that spawn the agent as a subprocess are
left out: the active mutant does reach a subprocess (MUTANT_UNDER_TEST is inherited and its
PYTHONPATH is the mutated copy), but mutmut records which test covers which function in its
own process only, so such a test would never be picked for a mutant; they are also the slow
ones. Equivalent mutants are listed in tests/mutation/equivalent.txt with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "build" / "mutation"  # --work changes it (two runs at once need two)
MUTANTS = STAGE / "mutants"
EQUIVALENT = REPO / "tests" / "mutation" / "equivalent.txt"

# file -> the tests that exercise it (globs, relative to the repository). Keep these to the
# in-process tests: see the module docstring for why subprocess tests do not count here.
MIGRATION_TESTS = ["tests/agent/test_migration_*.py", "tests/agent/test_cli_migrate.py",
                   "tests/agent/test_identity_rule.py", "tests/agent/test_mutation_migration_*.py"]
# A file outside agent_src/ (the role's enrollment module) is keyed by its name alone, so its
# path lives in one place: ENROLL_MODULE in the Makefile.
SELECTION: dict[str, list[str]] = {
    "agent_src/redflag_agent/migration/decide.py": MIGRATION_TESTS,
    "agent_src/redflag_agent/migration/merge.py": MIGRATION_TESTS,
    "agent_src/redflag_agent/migration/state.py": MIGRATION_TESTS,
    "agent_src/redflag_agent/migration/executor.py": MIGRATION_TESTS,
    "agent_src/redflag_agent/migration/backup.py": MIGRATION_TESTS,
    "agent_src/redflag_agent/registration.py": [
        "tests/agent/test_registration*.py", "tests/agent/test_enrolled_token.py",
        "tests/agent/test_mutation_registration*.py"],
    "agent_src/redflag_agent/config.py": [
        "tests/agent/test_config*.py", "tests/agent/test_mutation_config*.py"],
    "agent_src/redflag_agent/runner.py": [
        "tests/agent/test_runner*.py", "tests/agent/test_forget_identity.py",
        "tests/agent/test_mutation_runner*.py"],
    "agent_src/redflag_agent/backoff.py": [
        "tests/agent/test_pure.py", "tests/agent/test_mutation_backoff*.py",
        # the loops' sleeps, pinned where the loops are
        "tests/agent/test_mutation_checkin.py", "tests/agent/test_mutation_runner.py"],
    "agent_src/redflag_agent/checkin.py": [
        "tests/agent/test_checkin.py", "tests/agent/test_mutation_checkin*.py"],
    "redflag_agent_config.py": [
        "tests/role/test_config_module.py", "tests/role/test_mutation_*config*.py"],
}
# tests that use these fixtures start `python -m redflag_agent` in a subprocess
SUBPROCESS_FIXTURES = {"agent_env"}
# markers whose tests are too slow to run once per mutant
SKIP_MARKERS = {"slow", "property"}
# top-level entries of the repository that the staging tree provides itself
NOT_LINKED = {".git", ".venv", "build", "dist", "mutants", "agent_src", "tests",
              "pyproject.toml", "setup.cfg", ".pytest_cache", ".ruff_cache", ".molecule-cache"}


def selection_key(path: str) -> str:
    return path if path.startswith("agent_src/") else Path(path).name


def mutmut_module(path: str) -> str:
    """The module name mutmut gives a file in the staging tree (the runtime name as well)."""
    p = Path(path)
    if p.parts[0] == "agent_src":
        return ".".join(p.with_suffix("").parts[1:])
    return p.stem


def staged_path(path: str) -> Path:
    """Where the file sits in the staging tree (relative to it)."""
    p = Path(path)
    if p.parts[0] == "agent_src":
        return Path("src", *p.parts[1:])
    return Path(p.name)


def select_tests(files: list[str]) -> list[str]:
    """Node ids of the in-process, not-slow tests that exercise `files`."""
    import pytest

    globs = sorted({g for f in files for g in SELECTION.get(selection_key(f), [])})
    paths = sorted({str(p.relative_to(REPO)) for g in globs for p in REPO.glob(g)})
    if not paths:
        return []

    class Collect:
        ids: list[str] = []

        def pytest_collection_modifyitems(self, items) -> None:
            for item in items:
                if SUBPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
                    continue
                if any(item.get_closest_marker(m) for m in SKIP_MARKERS):
                    continue
                self.ids.append(item.nodeid)

    collector = Collect()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        rc = pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", *paths],
                         plugins=[collector])
    finally:
        os.chdir(cwd)
    if rc not in (0, 5):
        sys.exit(f"mutation: collecting the tests failed (pytest exit {rc})")
    return collector.ids


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_config(files: list[str], tests: list[str]) -> None:
    ours = (REPO / "pyproject.toml").read_text()
    # our [tool.mutmut] documents the settings; the paths here are the staging tree's
    start = ours.find("[tool.mutmut]")
    if start != -1:
        end = ours.find("\n[", start + 1)
        ours = ours[:start] + (ours[end + 1:] if end != -1 else "")
    import tomllib
    settings = tomllib.loads((REPO / "pyproject.toml").read_text()).get("tool", {}).get(
        "mutmut", {})
    sources = ["src"] + [str(staged_path(f)) for f in files if not f.startswith("agent_src/")]
    lines = ["", "[tool.mutmut]  # generated by tests/mutation/run.py",
             f"source_paths = {toml_list(sources)}",
             f"only_mutate = {toml_list([str(staged_path(f)) for f in files])}",
             f"pytest_add_cli_args_test_selection = {toml_list(tests)}"]
    for key, value in settings.items():
        if key not in ("source_paths", "only_mutate", "pytest_add_cli_args_test_selection"):
            lines.append(f"{key} = {json.dumps(value)}")
    (STAGE / "pyproject.toml").write_text(ours.rstrip() + "\n" + "\n".join(lines) + "\n")


def link(target: Path, at: Path) -> None:
    if at.is_symlink() or at.is_file():
        at.unlink()
    elif at.is_dir():
        shutil.rmtree(at)
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(os.path.relpath(target, at.parent))


def overlay(src_dir: Path, dst_dir: Path, skip: set[str], override: dict[Path, Path]) -> None:
    """Mirror src_dir into dst_dir with symlinks; `override` maps a path (relative to src_dir)
    to what it must point at instead, with real directories on the way to it."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src_dir.iterdir()):
        if entry.name in skip:
            continue
        rel = entry.relative_to(src_dir)
        below = {k.relative_to(rel): v for k, v in override.items()
                 if k != rel and k.parts[:len(rel.parts)] == rel.parts}
        if rel in override:
            link(override[rel], dst_dir / rel)
        elif below:
            overlay(entry, dst_dir / rel, set(), below)
        else:
            link(entry, dst_dir / rel)


def stage(files: list[str], tests: list[str], fresh: bool) -> None:
    if fresh and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    STAGE.mkdir(parents=True, exist_ok=True)
    link(REPO / "agent_src", STAGE / "src")
    link(REPO / "tests", STAGE / "tests")
    outside = [f for f in files if not f.startswith("agent_src/")]
    for f in outside:
        link(REPO / f, STAGE / staged_path(f))
    write_config(files, tests)
    # inside mutants/: agent_src is the mutated copy, a module loaded by path is the mutated
    # top-level copy, everything else the repository's own
    MUTANTS.mkdir(exist_ok=True)
    link(MUTANTS / "src", MUTANTS / "agent_src")
    overlay(REPO, MUTANTS, NOT_LINKED,
            {Path(f): MUTANTS / staged_path(f) for f in outside})


def load_equivalent() -> dict[str, str]:
    out: dict[str, str] = {}
    if not EQUIVALENT.exists():
        return out
    for raw in EQUIVALENT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, why = line.partition(" ")
        if not why.strip():
            sys.exit(f"mutation: {EQUIVALENT.relative_to(REPO)}: '{name}' has no reason; "
                     "write why the mutant is equivalent after its name")
        out[name] = why.strip()
    return out


STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          34: "skipped", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
          255: "timeout", None: "not checked"}


def read_codes(mutants: Path, f: str) -> Optional[dict[str, Any]]:
    meta = mutants / (str(staged_path(f)) + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else None


def not_killed(mutants: Path, files: list[str]) -> list[str]:
    """The mutants of an earlier run that no test killed (what new tests are for)."""
    names = []
    for f in files:
        codes = read_codes(mutants, f)
        if codes is None:
            sys.exit(f"mutation: no earlier results for {f} in {mutants}")
        names += [n for n, c in codes.items() if STATUS.get(c) != "killed"]
    return sorted(names)


def report(files: list[str], min_score: float, diffs: bool,
           earlier: Optional[Path] = None) -> int:
    equivalent = load_equivalent()
    seen_equivalent: set[str] = set()
    rows = []
    survivors: list[str] = []
    for f in files:
        codes = read_codes(MUTANTS, f)
        if codes is not None and earlier is not None:
            # a mutant killed earlier stays killed: the tests then are still in the selection
            old = read_codes(earlier, f) or {}
            if set(old) != set(codes):
                sys.exit(f"mutation: {f} has other mutants than in {earlier}: the code "
                         "changed, run without --rerun-survivors-of")
            codes = {n: (c if old[n] not in (1, 3) else old[n]) for n, c in codes.items()}
            # keep the whole picture here, so a later --rerun-survivors-of this run works
            meta = MUTANTS / (str(staged_path(f)) + ".meta")
            data = json.loads(meta.read_text())
            data["exit_code_by_key"] = codes
            meta.write_text(json.dumps(data, indent=4))
        if codes is None:
            rows.append((f, None))
            continue
        count = {"killed": 0, "survived": 0, "timeout": 0, "no tests": 0, "not checked": 0,
                 "other": 0, "equivalent": 0}
        for name, code in sorted(codes.items()):
            status = STATUS.get(code, "other")
            if name in equivalent:
                seen_equivalent.add(name)
                count["equivalent"] += 1
                if status == "killed":
                    print(f"note: {name} is listed as equivalent but a test kills it: "
                          "remove it from equivalent.txt")
                continue
            count[status if status in count else "other"] += 1
            if status != "killed":
                survivors.append(f"{name}: {status}")
        total = len(codes)
        counted = total - count["equivalent"]
        score = 100.0 * count["killed"] / counted if counted else 100.0
        rows.append((f, (total, count, score)))

    head = (f"{'file':<52} {'mutants':>7} {'killed':>6} {'surv':>5} {'tmout':>5} "
            f"{'notest':>6} {'unchk':>5} {'equiv':>5} {'score':>6}")
    print()
    print(head)
    print("-" * len(head))
    failed = []
    for f, row in rows:
        if row is None:
            print(f"{f:<52} {'(no results)':>7}")
            failed.append(f)
            continue
        total, c, score = row
        print(f"{f:<52} {total:>7} {c['killed']:>6} {c['survived']:>5} {c['timeout']:>5} "
              f"{c['no tests'] + c['other']:>6} {c['not checked']:>5} {c['equivalent']:>5} "
              f"{score:>5.1f}%")
        if score < min_score:
            failed.append(f)
    print()
    for name in sorted(set(equivalent) - seen_equivalent):
        module = name.split(".x_")[0].split(".xǁ")[0]
        if any(mutmut_module(f) == module for f in files):
            print(f"note: equivalent.txt names {name}, which no longer exists: "
                  "the code changed, re-check and update the list")
    if survivors:
        print("not killed (score = killed / (mutants - equivalent); a timeout is not a kill):")
        for s in survivors:
            print("  " + s)
        if diffs:
            for s in survivors:
                name = s.split(":")[0]
                subprocess.run([str(Path(sys.executable).parent / "mutmut"), "show", name],
                               cwd=STAGE, check=False)
    if failed:
        print(f"mutation: below {min_score:g}%: {', '.join(failed)}")
        return 2
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", help="files to mutate, relative to the repository")
    parser.add_argument("--jobs", type=int, default=2, help="parallel mutant runs (default 2)")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="exit 2 when a file scores below this percentage")
    parser.add_argument("--report-only", action="store_true",
                        help="print the table from the last run without running mutmut")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the last run's results (default: start fresh, so new tests "
                             "are run against every mutant)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "mutation",
                        help="staging directory (default build/mutation)")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    parser.add_argument("--rerun-survivors-of", type=Path, metavar="WORKDIR",
                        help="run only the mutants an earlier run (its --work directory) did "
                             "not kill, and score them together with its kills")
    parser.add_argument("--mutant", action="append", default=[],
                        help="re-run only these mutant names (globs), implies --keep")
    args = parser.parse_args()
    global STAGE, MUTANTS
    STAGE = args.work.resolve()
    MUTANTS = STAGE / "mutants"

    files = [str(Path(f)) for f in args.files]
    if not files:
        parser.error("name the files to mutate (make mutate lists them all)")
    unknown = [f for f in files if selection_key(f) not in SELECTION]
    if unknown:
        sys.exit(f"mutation: no test selection for {', '.join(unknown)}: add the file and "
                 "the tests that exercise it to SELECTION in tests/mutation/run.py")
    missing = [f for f in files if not (REPO / f).is_file()]
    if missing:
        sys.exit(f"mutation: no such file: {', '.join(missing)}")

    if not args.report_only:
        tests = select_tests(files)
        if not tests:
            sys.exit("mutation: no in-process tests selected for these files")
        print(f"mutation: {len(files)} file(s), {len(tests)} tests in the selection")
        stage(files, tests, fresh=not (args.keep or args.mutant))
        if args.rerun_survivors_of:
            earlier = args.rerun_survivors_of.resolve() / "mutants"
            args.mutant = not_killed(earlier, files)
            print(f"mutation: re-running the {len(args.mutant)} mutants {earlier} did not kill")
        start = time.monotonic()
        mutmut = Path(sys.executable).parent / "mutmut"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDFLAG_")}
        rc = subprocess.run([str(mutmut), "run", "--max-children", str(args.jobs),
                             *args.mutant], cwd=STAGE, env=env, check=False).returncode
        print(f"mutation: mutmut finished in {time.monotonic() - start:.0f} s (exit {rc})")
        if rc != 0:
            return rc
    earlier = args.rerun_survivors_of.resolve() / "mutants" if args.rerun_survivors_of else None
    return report(files, args.min_score, args.diffs, earlier)


if __name__ == "__main__":
    sys.exit(main())
