import pytest
import storm
from common import DevServer


def test_jitter_schedule_is_deterministic_and_bounded():
    a = storm.jitter_schedule(500, 10.0, seed=3)
    assert a == storm.jitter_schedule(500, 10.0, seed=3)
    assert a != storm.jitter_schedule(500, 10.0, seed=4)
    assert all(0.0 <= d < 10.0 for d in a)
    assert max(a) > 9.0 and min(a) < 1.0  # spread over the whole window
    assert storm.jitter_schedule(5, 0.0, seed=3) == [0.0] * 5


def test_per_second_buckets():
    assert storm.per_second([0.1, 0.9, 1.0, 2.5, 2.7, 2.99]) == {0: 2, 1: 1, 2: 3}
    assert storm.per_second([]) == {}


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 0.5, 0.0), ([1.0], 0.95, 1.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
    ([float(i) for i in range(1, 101)], 0.95, 95.0),
])
def test_percentile(values, q, expected):
    assert storm.percentile(values, q) == expected


def _outcomes(registered, rejected, failed=0, status=400):
    outs = [storm.Outcome(f"h{i}", result="registered", status=200) for i in range(registered)]
    outs += [storm.Outcome(f"x{i}", result="rejected", status=status) for i in range(rejected)]
    outs += [storm.Outcome(f"f{i}", result="failed") for i in range(failed)]
    return outs


def _server(names, ids=None):
    return [{"hostname": n, "agent_id": (ids or {}).get(n, f"id-{n}")} for n in names]


def test_verdict_ok():
    v = storm.verdict(_outcomes(3, 1), _server(["h0", "h1", "h2"]), seats=3)
    assert v["ok"] and v["duplicates"] == 0 and v["rejected_with_400"] == 1


@pytest.mark.parametrize(("outcomes", "server", "broken"), [
    # a retry after a lost answer registered the same host twice
    (_outcomes(3, 1), _server(["h0", "h1", "h2", "h2"]), "duplicates"),
    # seats not respected: the extra agent got in
    (_outcomes(4, 0), _server(["h0", "h1", "h2", "h3"]), "rejected_clients"),
    # the extra agent was refused for the wrong reason
    (_outcomes(3, 1, status=401), _server(["h0", "h1", "h2"]), "rejected_with_400"),
    # a client gave up
    (_outcomes(2, 1, failed=1), _server(["h0", "h1"]), "failed_clients"),
    # server holds a host the clients think was refused
    (_outcomes(3, 1), _server(["h0", "h1", "x0"]), "server_matches_clients"),
])
def test_verdict_catches(outcomes, server, broken):
    v = storm.verdict(outcomes, server, seats=3)
    assert not v["ok"], broken


def test_small_storm_against_the_real_stand_in_server(tmp_path, monkeypatch):
    monkeypatch.setattr(storm, "WORK", tmp_path)
    r = storm.one_storm("together", agents=30, extra=5, spread_s=0.0, seed=1)
    assert r["ok"], r
    assert r["requests"] >= 35 and r["peak_rps"] >= 1
    assert r["server_agents"] == 30 and r["rejected_with_400"] == 5


def test_devserver_refuses_nothing_silently(tmp_path):
    with DevServer(tmp_path / "s") as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert server.mint(2) != server.mint(2)
        assert server.agents() == []
