"""Network durations: seconds, or Go nanoseconds as 0.1.x agents wrote them."""

from __future__ import annotations

import json

import pytest

from redflag_agent import config
from redflag_agent.runner import make_client


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), (2.5, 2.5), (30_000_000_000, 30.0), (5_000_000_000, 5.0), (1_000_000, 0.001)],
)
def test_duration_seconds(value: float, seconds: float) -> None:
    assert config.duration_seconds(value) == pytest.approx(seconds)


def test_legacy_nanosecond_timeout_gives_a_usable_client() -> None:
    cfg = {"version": "6", "server_url": "http://127.0.0.1:9",
           "network": {"timeout": 30_000_000_000, "retry_delay": 5_000_000_000}}
    config.validate(cfg)
    assert make_client(cfg).timeout == pytest.approx(30.0)


@pytest.mark.parametrize("bad", [0, -1, 7200, 10**20])
def test_out_of_range_timeout_is_a_config_error_naming_the_field(bad: int, tmp_path) -> None:
    path = tmp_path / "config.json"
    raw = json.dumps({"version": "6", "server_url": "http://127.0.0.1:9",
                      "network": {"timeout": bad}}).encode()
    with pytest.raises(config.ConfigError, match=r"network\.timeout") as err:
        config.parse_config_bytes(raw, path)
    assert str(path) in str(err.value)
