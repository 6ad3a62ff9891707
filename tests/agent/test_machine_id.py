"""The machine ID as upstream computes it (CONTRACT 4b): the pure rule as a table, the reader
against files under a temporary root. Expected hashes are literals (checked with sha256sum)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from redflag_agent import machine_id as mid
from redflag_agent.paths import Paths

DBUS, ETC, DMI = mid.SOURCES
RAW = b"0123456789abcdef0123456789abcdef"
RAW_ID = "3eb1bd439947eb762998e566ccc2e099c791118b2f40579cc4f7da2b5061b7f9"
UUID = b"4C4C4544-0042-3510-8052-B4C04F564433"
UUID_ID = "a98236ad40f08a726305c9336d2a389292ef12a8a9f0553f7e0a1edb4fd6ab96"
FALLBACK_ID = "b65348d5b5bf74b48861104ce3a06a20cbfe7718739467b36c1e56d737fe6157"  # web-1


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    ("contents", "value", "source"),
    [
        ((RAW + b"\n", b"other\n", UUID), RAW_ID, DBUS),  # dbus first
        ((None, RAW + b"\n", UUID), RAW_ID, ETC),
        ((b"", RAW, None), RAW_ID, ETC),  # empty: next
        ((b" \n\t", RAW, None), RAW_ID, ETC),  # blank after trimming: next
        ((None, None, UUID + b"\n"), UUID_ID, DMI),  # raw: no lowercasing
        ((None, b"\n", b"  "), FALLBACK_ID, mid.FALLBACK),
        ((None, None, None), FALLBACK_ID, mid.FALLBACK),
        ((), FALLBACK_ID, mid.FALLBACK),
        # Trimmed as Go's strings.TrimSpace: ASCII space, \t\n\v\f\r, NEL, NBSP...
        ((b"\t\v\f\r " + RAW + b" \r\n",), RAW_ID, DBUS),
        ((b"\xc2\xa0" + RAW + b"\xc2\x85",), RAW_ID, DBUS),
        ((b"\xe3\x80\x80" + RAW,), RAW_ID, DBUS),  # U+3000
        # ...but not what Go keeps: \x1c-\x1f and \x00; bytes that are not UTF-8 stay.
        ((b"\x1f" + RAW,), _sha(b"\x1f" + RAW), DBUS),
        ((RAW + b"\x00\n",), _sha(RAW + b"\x00"), DBUS),
        ((b"\xff" + RAW + b"\n",), _sha(b"\xff" + RAW), DBUS),
        # Inner whitespace is kept.
        ((b"ab cd\n",), _sha(b"ab cd"), DBUS),
    ],
)
def test_machine_id_from(contents, value, source):
    assert mid.machine_id_from(contents, "web-1") == mid.MachineId(value, source)


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("web-1", FALLBACK_ID),
        ("", _sha(b"-linux-fallback")),
        ("h\u00e9", _sha("h\u00e9-linux-fallback".encode())),
    ],
)
def test_fallback_uses_the_hostname(hostname, expected):
    assert mid.machine_id_from([None, None, None], hostname).value == expected


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (RAW_ID, True),
        (UUID_ID, True),
        (RAW_ID.upper(), False),
        (RAW_ID[:-1], False),
        (RAW_ID + "0", False),
        (RAW_ID + "\n", False),
        ("g" * 64, False),
        (RAW.decode(), False),  # a raw machine-id (32 hex) is not the hashed ID
        ("", False),
        (None, False),
        (b"a" * 64, False),
    ],
)
def test_is_valid_machine_id(value, valid):
    assert mid.is_valid_machine_id(value) is valid


def test_every_result_is_a_valid_machine_id():
    for contents in ([RAW], [None, UUID], [None, None, None]):
        assert mid.is_valid_machine_id(mid.machine_id_from(contents, "x").value)


# The reader, under a temporary root


def _put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_source_paths_are_under_the_root(tmp_path):
    paths = mid.source_paths(Paths(tmp_path))
    assert paths == (
        tmp_path / "var/lib/dbus/machine-id",
        tmp_path / "etc/machine-id",
        tmp_path / "sys/class/dmi/id/product_uuid",
    )


@pytest.mark.parametrize(
    ("files", "value", "source"),
    [
        ({ETC: RAW + b"\n"}, RAW_ID, ETC),
        ({DBUS: RAW + b"\n", ETC: b"other\n"}, RAW_ID, DBUS),
        ({DBUS: b"\n", ETC: RAW}, RAW_ID, ETC),
        ({DMI: UUID + b"\n"}, UUID_ID, DMI),
        ({}, FALLBACK_ID, mid.FALLBACK),
    ],
)
def test_read_machine_id(tmp_path, files, value, source):
    for rel, data in files.items():
        _put(tmp_path, rel, data)
    assert mid.read_machine_id(Paths(tmp_path), "web-1") == mid.MachineId(value, source)


def test_read_machine_id_defaults_to_this_hosts_name(tmp_path, monkeypatch):
    monkeypatch.setattr(mid.socket, "gethostname", lambda: "web-1")
    assert mid.read_machine_id(Paths(tmp_path)).value == FALLBACK_ID


def test_dbus_symlink_to_etc_is_followed_as_upstream_does(tmp_path):
    _put(tmp_path, ETC, RAW + b"\n")
    link = tmp_path / DBUS
    link.parent.mkdir(parents=True)
    link.symlink_to("../../../etc/machine-id")  # what Debian's dbus package installs
    assert mid.read_machine_id(Paths(tmp_path), "x") == mid.MachineId(RAW_ID, DBUS)


def test_unusable_sources_are_skipped(tmp_path):
    root = tmp_path
    (root / "var/lib/dbus/machine-id").mkdir(parents=True)  # a directory
    (root / "etc").mkdir()
    (root / ETC).symlink_to("nowhere")  # dangling
    dmi = _put(root, DMI, UUID)
    assert mid.read_machine_id(Paths(root), "x") == mid.MachineId(UUID_ID, DMI)
    dmi.write_bytes(b"9" * (mid.MAX_SOURCE_BYTES + 1))  # far too large for an ID
    assert mid.read_machine_id(Paths(root), "web-1").source == mid.FALLBACK


def test_a_fifo_cannot_hang_the_reader(tmp_path):
    fifo = tmp_path / DBUS
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    _put(tmp_path, ETC, RAW)
    result: list = []
    reader = threading.Thread(
        target=lambda: result.append(mid.read_machine_id(Paths(tmp_path), "x")), daemon=True
    )
    reader.start()
    reader.join(10)
    assert result == [mid.MachineId(RAW_ID, ETC)]


@pytest.mark.parametrize(
    ("size", "usable"), [(mid.MAX_SOURCE_BYTES, True), (mid.MAX_SOURCE_BYTES + 1, False)]
)
def test_read_source_bound(tmp_path, size, usable):
    path = _put(tmp_path, "f", b"a" * size)
    assert (mid.read_source(path) is not None) is usable


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
def test_unreadable_source_is_skipped(tmp_path):
    path = _put(tmp_path, DMI, UUID)
    path.chmod(0)
    try:
        assert mid.read_machine_id(Paths(tmp_path), "web-1").source == mid.FALLBACK
    finally:
        path.chmod(0o600)


def test_later_sources_are_not_opened_once_one_answered(tmp_path, monkeypatch):
    _put(tmp_path, DBUS, RAW)
    _put(tmp_path, DMI, UUID)
    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(mid.os, "open", spy)
    assert mid.read_machine_id(Paths(tmp_path), "x").source == DBUS
    assert opened == [os.fspath(tmp_path / DBUS)]
