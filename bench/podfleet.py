"""The bench's systemd test containers: create, wait for boot, remove. Only names that
start with PREFIX are ever touched, so other people's containers are safe."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from common import BenchError, run

PREFIX = "rf-bench-"
IMAGE = "localhost/redflag-debian12-systemd:latest"
BOOT_TIMEOUT_S = 180


def _check_ours(names: list[str]) -> None:
    bad = [n for n in names if not n.startswith(PREFIX)]
    if bad:
        raise BenchError(f"refusing to touch containers not named {PREFIX}*: {bad}")


def names_for(size: int) -> list[str]:
    return [f"{PREFIX}n{size}-{i:02d}" for i in range(1, size + 1)]


def existing() -> list[str]:
    res = run(["podman", "ps", "-a", "--format", "{{.Names}}"], timeout=60)
    return [n for n in res.stdout.split() if n.startswith(PREFIX)]


def remove(names: list[str]) -> None:
    _check_ours(names)
    if names:
        run(["podman", "rm", "-f", "-t", "0", *names], timeout=300, check=False)


def remove_all_ours() -> None:
    remove(existing())


def require_image(image: str = IMAGE) -> None:
    if run(["podman", "image", "exists", image], timeout=60, check=False).returncode != 0:
        raise BenchError(f"image {image} is missing; build it with "
                         "'make image' (molecule/images/build-debian.sh)")


def _start(name: str, image: str) -> None:
    run(["podman", "run", "-d", "--name", name, "--hostname", name, "--systemd=always",
         "--network", "host", "--label", "owner=rf-bench", image, "/sbin/init"], timeout=120)


def _wait_booted(name: str) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        left = max(1.0, deadline - time.monotonic())
        res = run(["podman", "exec", name, "systemctl", "is-system-running", "--wait"],
                  timeout=left, check=False)
        state = res.stdout.strip()
        # "degraded" (some unit failed) still boots; what the bench needs is systemd itself.
        if state in ("running", "degraded"):
            return state
        # Right after `podman run` systemd may not have opened its bus yet: ask again.
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: systemd did not boot within {BOOT_TIMEOUT_S} s "
                             f"(state {state!r}, {res.stderr.strip()})")
        time.sleep(0.2)


def create(names: list[str], image: str = IMAGE) -> float:
    """Start the containers and wait until systemd runs in each; returns seconds taken."""
    _check_ours(names)
    t0 = time.monotonic()
    # podman itself serialises on its lock; two workers keep the 2-core machine responsive.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda n: _start(n, image), names))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(_wait_booted, names))
    return time.monotonic() - t0
