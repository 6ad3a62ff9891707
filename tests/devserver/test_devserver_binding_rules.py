"""The pure decisions behind machine binding and refresh-token rotation, as tables."""

from __future__ import annotations

import pytest

from redflag_devserver import rules
from redflag_devserver.rules import RefreshState

NOW = 1_000_000.0
LATER = NOW + 10


@pytest.mark.parametrize(
    ("text", "binds", "rotates"),
    [("0.1.18", False, False), ("0.1.23", True, False), ("0.2", True, True)],
)
def test_parse_generation(text, binds, rotates):
    generation = rules.parse_generation(text)
    assert (generation.name, generation.binds_machines, generation.rotates_refresh) == (
        text,
        binds,
        rotates,
    )


@pytest.mark.parametrize("text", ["0.1.22", "0.2.0", "", "latest", "0.1"])
def test_parse_generation_rejects(text):
    with pytest.raises(rules.InvalidInput, match="0.1.18, 0.1.23, 0.2"):
        rules.parse_generation(text)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0123456789abcdef" * 4, True),
        ("a" * 64, True),
        ("A" * 64, False),
        ("a" * 63, False),
        ("a" * 65, False),
        ("a" * 63 + "\n", False),
        ("g" * 64, False),
        ("", False),
        (None, False),
        (64, False),
    ],
)
def test_is_machine_id(value, valid):
    assert rules.is_machine_id(value) is valid


M = "a" * 64


@pytest.mark.parametrize(
    ("bound", "header", "error"),
    [
        (M, None, rules.MISSING_MACHINE_ID),
        (M, "", rules.MISSING_MACHINE_ID),
        (None, None, rules.MISSING_MACHINE_ID),  # missing is judged first, as upstream
        (None, M, rules.NOT_BOUND),
        (M, "b" * 64, rules.MACHINE_MISMATCH),
        (M, M.upper(), rules.MACHINE_MISMATCH),
        (M, M + " ", rules.MACHINE_MISMATCH),
        (M, M, None),
    ],
)
def test_binding_refusal(bound, header, error):
    refusal = rules.binding_refusal(bound, header)
    if error is None:
        assert refusal is None
    else:
        assert refusal["error"] == error
        assert refusal["hint"]


def test_binding_texts_are_contract_4b():
    assert rules.MISSING_MACHINE_ID == (
        "missing machine ID header - agent version too old or tampered"
    )
    assert rules.NOT_BOUND == "agent not bound to machine - re-registration required"
    assert rules.MACHINE_MISMATCH == (
        "machine ID mismatch - config file copied to different machine"
    )


@pytest.mark.parametrize(
    ("version", "minimum", "below"),
    [
        ("0.1.21", "0.1.22", True),
        ("0.1.21.9", "0.1.22", True),
        ("0.1.18", "0.1.22", True),
        ("0.1.22", "0.1.22", False),
        ("0.1.22.0", "0.1.22", False),
        ("0.1.23.6", "0.1.22", False),
        ("0.2", "0.1.22", False),
        ("0.2.0-dev", "0.1.22", False),
        ("v0.2.0", "0.1.22", False),
        ("0.10.0", "0.9.0", False),  # numeric, not text, comparison
        ("0.2.0", "0.3", True),
        ("", "0.1.22", True),
        (None, "0.1.22", True),
        ("latest", "0.1.22", True),
    ],
)
def test_version_below(version, minimum, below):
    assert rules.version_below(version, minimum) is below


def test_upgrade_required_body():
    body = rules.upgrade_required("0.1.21", "0.1.22")
    assert body["error"] == "agent version too old - upgrade required for security"
    assert (body["current_version"], body["minimum_version"]) == ("0.1.21", "0.1.22")


def _state(revoked=False, expires_at=LATER, consumed=False, successor=None):
    return RefreshState(revoked, expires_at, consumed, successor)


@pytest.mark.parametrize(
    ("state", "rotating", "verdict"),
    [
        (None, True, "invalid"),
        (None, False, "invalid"),
        (_state(revoked=True), True, "invalid"),
        (_state(revoked=True), False, "invalid"),
        (_state(expires_at=NOW), True, "expired"),
        (_state(expires_at=NOW), False, "expired"),
        (_state(), True, "accept"),
        (_state(), False, "accept"),
        (_state(consumed=True, successor="live"), True, "grace"),
        (_state(consumed=True, successor="consumed"), True, "reuse"),
        (_state(consumed=True, successor="revoked"), True, "reuse"),
        (_state(consumed=True, successor=None), True, "reuse"),
        # A server without rotation never consumes; a consumed token is just refused.
        (_state(consumed=True, successor="live"), False, "invalid"),
        # Expiry is judged before the replay: an expired replay revokes nothing.
        (_state(expires_at=NOW, consumed=True, successor="consumed"), True, "expired"),
    ],
)
def test_refresh_verdict(state, rotating, verdict):
    assert rules.refresh_verdict(state, NOW, rotating) == verdict


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"machine_id": "A" * 64}, "machine_id"),
        ({"machine_id": 5}, "machine_id"),
        ({"available_scanners": "apt"}, "available_scanners"),
        ({"available_scanners": [None]}, "available_scanners"),
        ({"public_key_fingerprint": 1}, "public_key_fingerprint"),
        ({"os_distro": []}, "os_distro"),
    ],
)
def test_validate_registration_binding_fields(body, fragment):
    base = {"hostname": "h", "os_type": "linux", "agent_version": "0.2.0"}
    with pytest.raises(rules.InvalidInput, match=fragment):
        rules.validate_registration({**base, **body}, binding=True)
    # A 0.1.18 server does not look at them.
    assert rules.validate_registration({**base, **body}).machine_id is None


def test_validate_registration_keeps_binding_fields():
    reg = rules.validate_registration(
        {
            "hostname": "h",
            "os_type": "linux",
            "agent_version": "0.2.0",
            "machine_id": M,
            "public_key_fingerprint": "",
            "os_distro": "debian",
            "available_scanners": ["apt", "docker"],
        },
        binding=True,
    )
    assert (reg.machine_id, reg.public_key_fingerprint, reg.os_distro) == (M, None, "debian")
    assert reg.available_scanners == ["apt", "docker"]


def test_validate_renewal_agent_version():
    body = {"agent_id": "x", "refresh_token": "y"}
    assert rules.validate_renewal(body).agent_version is None
    assert rules.validate_renewal({**body, "agent_version": "0.2.0"}).agent_version == "0.2.0"
    with pytest.raises(rules.InvalidInput, match="agent_version"):
        rules.validate_renewal({**body, "agent_version": 2})
