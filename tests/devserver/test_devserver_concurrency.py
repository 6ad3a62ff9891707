"""Seats are consumed atomically: a burst of registrations never over-fills a token."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter

from redflag_devserver.rules import Registration
from redflag_devserver.store import Store, TokenRefused


def test_fifty_concurrent_registrations_against_ten_seats(running):
    token = running.client.mint(seats=10)
    barrier = threading.Barrier(50)
    results: list = [None] * 50

    def attempt(index: int) -> None:
        barrier.wait()
        results[index] = running.client.register(token, hostname=f"host-{index}")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = Counter(r.status for r in results)
    assert statuses == {200: 10, 400: 40}
    refusals = {r.body["error"] for r in results if r.status == 400}
    assert refusals == {"registration token could not be consumed: all seats used"}
    winners = {r.body["agent_id"] for r in results if r.status == 200}
    assert len(winners) == 10
    assert {a["agent_id"] for a in running.client.agents()} == winners
    [info] = running.client.call("GET", "/admin/tokens").body["tokens"]
    assert (info["seats_used"], info["seats"]) == (10, 10)
    with sqlite3.connect(running.store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM agents").fetchone() == (10,)


def test_two_stores_on_one_file_share_seats(tmp_path, clock):
    """The server and the admin CLI each open the file: seats still cannot over-fill."""
    path = str(tmp_path / "shared.db")
    first, second = Store(path, create=True), Store(path)
    minted = first.mint_token(seats=6, ttl=3600, note=None, now=clock())
    reg = Registration("h", "linux", None, None, "0.2.0", {})
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(store: Store) -> None:
        try:
            store.register(minted["token"], reg, clock())
            outcome = "ok"
        except TokenRefused:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=((first, second)[i % 2],)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert Counter(outcomes) == {"ok": 6, "refused": 14}
    assert len(first.list_agents()) == 6
