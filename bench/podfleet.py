"""The bench's systemd test containers: create, wait for boot, remove. Only names that
start with PREFIX are ever touched, so other people's containers are safe."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import BENCH, WORK, BenchError, run

PREFIX = "rf-bench-"
IMAGE = "localhost/redflag-debian12-systemd:latest"
SSHD_FILE = BENCH / "images" / "Containerfile.sshd"
SSH_DIR = WORK / "ssh"
BOOT_TIMEOUT_S = 180
INOTIFY_PER_CONTAINER = 6  # systemd, journald, logind, dbus... measured: 20 containers use ~120


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


def sshd_image() -> str:
    """The base image plus sshd, tagged by the Containerfile's hash (built once, ~1 min)."""
    require_image()
    tag = hashlib.sha256(SSHD_FILE.read_bytes()).hexdigest()[:12]
    image = f"localhost/redflag-bench-sshd:{tag}"
    if run(["podman", "image", "exists", image], timeout=60, check=False).returncode != 0:
        run(["podman", "build", "--network", "host", "--build-arg", f"BASE={IMAGE}",
             "-f", str(SSHD_FILE), "-t", image, str(SSHD_FILE.parent)], timeout=900)
    return image


def ssh_key() -> Path:
    """The bench's own key pair (private key never leaves bench/work/ssh)."""
    key = SSH_DIR / "id_ed25519"
    if not key.exists():
        SSH_DIR.mkdir(parents=True, exist_ok=True)
        SSH_DIR.chmod(0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rf-bench", "-f", str(key)],
            timeout=60)
    return key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(name: str, image: str, port: int | None) -> None:
    mounts: list[str] = []
    if port is not None:
        pub = f"{ssh_key()}.pub"
        conf = SSH_DIR / f"{name}.conf"
        conf.write_text(f"Port {port}\n")
        mounts = ["-v", f"{conf}:/etc/ssh/sshd_config.d/port.conf:ro",
                  "-v", f"{pub}:/root/.ssh/authorized_keys:ro"]
    run(["podman", "run", "-d", "--name", name, "--hostname", name, "--systemd=always",
         "--network", "host", "--label", "owner=rf-bench", *mounts, image, "/sbin/init"],
        timeout=120)


def _wait_sshd(port: int) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"sshd on 127.0.0.1:{port} did not answer within "
                             f"{BOOT_TIMEOUT_S} s")
        time.sleep(0.2)


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


def inotify_instances_in_use() -> int:
    """inotify instances held by processes we can see (all root's on this machine)."""
    count = 0
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            count += sum(1 for fd in fd_dir.iterdir() if os.readlink(fd) == "anon_inode:inotify")
        except OSError:
            continue  # the process went away or is not ours
    return count


def inotify_shortfall(limit: int, in_use: int, containers: int) -> int:
    """Pure: how many inotify instances are missing for that many more containers."""
    return max(0, in_use + containers * INOTIFY_PER_CONTAINER - limit)


def check_inotify(containers: int) -> None:
    """systemd in a container that finds no inotify instance left hangs at boot; say why."""
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    missing = inotify_shortfall(limit, inotify_instances_in_use(), containers)
    if missing:
        raise BenchError(
            f"{containers} systemd containers need about {containers * INOTIFY_PER_CONTAINER} "
            f"inotify instances, {missing} more than fs.inotify.max_user_instances={limit} "
            "leaves free; their systemd would hang at boot. Raise it (as root): "
            "sysctl -w fs.inotify.max_user_instances=1024")


def create(names: list[str], image: str = IMAGE,
           ports: dict[str, int] | None = None) -> float:
    """Start the containers (with sshd on the given loopback ports, when given) and wait
    until systemd, and sshd, run in each; returns seconds taken."""
    _check_ours(names)
    check_inotify(len(names))
    t0 = time.monotonic()
    # podman itself serialises on its lock; two workers keep the 2-core machine responsive.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda n: _start(n, image, (ports or {}).get(n)), names))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(_wait_booted, names))
        list(pool.map(_wait_sshd, (ports or {}).values()))
    return time.monotonic() - t0
