#!/usr/bin/env python3
"""Build dist/redflag-agent-<version>.pyz (+ .sha256): one file, stdlib only, byte-reproducible.

Entries are sorted and carry a fixed timestamp and mode, so the same source always gives the
same checksum and the role's copy task stays unchanged on re-runs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import marshal
import os
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "redflag_agent"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = "import sys\n\nfrom redflag_agent.cli import main\n\nsys.exit(main())\n"
STAMP = "_build_version.py"
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")


def source_version(src_root: Path = HERE) -> str:
    text = (src_root / PACKAGE / "version.py").read_text(encoding="utf-8")
    m = re.search(r'^AGENT_VERSION = "([^"]+)"', text, re.MULTILINE)
    if not m:
        raise SystemExit("build_zipapp: cannot find AGENT_VERSION in version.py")
    return m.group(1)


def collection_version(root: Path) -> tuple[str, str] | None:
    """(file, version) of the collection around agent_src, None outside one.

    galaxy.yml in a checkout; an installed collection has MANIFEST.json instead.
    """
    galaxy = root / "galaxy.yml"
    if galaxy.is_file():
        m = re.search(r"^version:\s*[\"']?([^\"'\s#]+)", galaxy.read_text(encoding="utf-8"),
                      re.MULTILINE)
        return ("galaxy.yml", m.group(1) if m else "")
    manifest = root / "MANIFEST.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text(encoding="utf-8")).get("collection_info", {})
        return ("MANIFEST.json", str(info.get("version", "")))
    return None


def version_mismatch(src_root: Path = HERE) -> str | None:
    """galaxy.yml's version is the one source; version.py must repeat it (docs/RELEASING.md)."""
    found = collection_version(src_root.parent)
    if found is None:
        return None
    name, version = found
    agent = source_version(src_root)
    if version == agent:
        return None
    return (f"build_zipapp: {name} says version {version!r} but "
            f"agent_src/{PACKAGE}/version.py says AGENT_VERSION = {agent!r}; "
            f"set AGENT_VERSION to galaxy.yml's version (docs/RELEASING.md)")


def package_files(src: Path) -> list[Path]:
    files = []
    for path in src.rglob("*.py"):
        rel = path.relative_to(src.parent)
        if "__pycache__" in rel.parts or path.name == STAMP:
            continue
        files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def checked_pyc(name: str, source: bytes) -> bytes:
    """Bytecode for the building interpreter, validated against the source hash at import.

    zipimport cannot cache bytecode, so without this every start compiles the whole agent.
    Another Python version sees a different magic number and falls back to the source.
    """
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    flags = 0b11  # hash-based, check the source
    return (importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o100644 & 0xFFFF) << 16
    info.create_system = 3  # unix, so the mode above is honoured
    return info


def build_bytes(version: str, src_root: Path = HERE, with_bytecode: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        entries: list[tuple[str, bytes]] = [("__main__.py", MAIN.encode())]
        for rel in package_files(src_root / PACKAGE):
            entries.append((rel.as_posix(), (src_root / rel).read_bytes()))
        entries.append((f"{PACKAGE}/{STAMP}",
                        f'AGENT_VERSION = "{version}"\n'.encode()))
        if with_bytecode:
            entries += [(name[:-3] + ".pyc", checked_pyc(name, data))
                        for name, data in list(entries) if name.endswith(".py")]
        for name, data in sorted(entries):
            zf.writestr(_entry(name), data, compress_type=zipfile.ZIP_DEFLATED,
                        compresslevel=9)
    return SHEBANG + buf.getvalue()


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", help="agent version to stamp (default: the package's)")
    p.add_argument("--out", default=str(HERE.parent / "dist"), help="output directory")
    p.add_argument("--no-bytecode", action="store_true",
                   help="sources only (smaller; every start compiles the agent)")
    args = p.parse_args(argv)
    mismatch = version_mismatch()
    if mismatch:
        print(mismatch, file=sys.stderr)
        return 2
    version = args.version or source_version()
    if not VERSION_RE.match(version):
        print(f"build_zipapp: invalid --version {version!r}: use letters, digits, . + _ -",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_bytes(version, with_bytecode=not args.no_bytecode)
    name = f"redflag-agent-{version}.pyz"
    write_atomic(out / name, data, 0o644)
    digest = hashlib.sha256(data).hexdigest()
    write_atomic(out / f"{name}.sha256", f"{digest}  {name}\n".encode(), 0o644)
    print(f"{out / name} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
