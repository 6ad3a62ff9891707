"""File operations that never follow what the redflag-agent user can plant.

Root (the unit's `migrate`, the role's `config apply`, `status`) works inside directories
the unprivileged agent user owns: /etc/redflag-agent, /var/lib/redflag-agent and the
upstream layouts' /etc/aggregator, /var/lib/aggregator, /etc/redflag, /var/lib/redflag and
/var/log/redflag. Every open, create, rename, remove, chmod and chown
there goes through this module, which works relative to directory file descriptors:

- the anchor (the parent of those directories, e.g. /etc) is trusted: root-owned and not
  writable by anyone else; below it every component is opened with O_NOFOLLOW|O_DIRECTORY;
- a file is lstat'ed, then opened with O_NOFOLLOW|O_NONBLOCK and fstat'ed: it must be the
  same regular file, with one link, owned by root, the agent user or us;
- new files are created O_EXCL|O_NOFOLLOW, owner and mode are set on the fd, renames and
  removals use dir_fd, trees are removed by an fd walk that never follows a symlink.

Anything else raises UnsafePath, naming the path and what was found there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import Optional, Union

from . import owner

PathArg = Union[str, "os.PathLike[str]"]

# the directories the agent user may write, as suffixes below REDFLAG_ROOT: ours, 0.1.18's,
# and the later upstream layouts' (/etc/redflag holds 0.1.19-0.1.23's config and 0.2's
# agent/, agent_id, server/; /var/lib/redflag/agent and /var/log/redflag/agent are 0.2's).
# The loop's litter lies inside /var/lib/redflag-agent.
AGENT_TOPS: tuple[tuple[str, ...], ...] = (
    ("etc", "redflag-agent"), ("var", "lib", "redflag-agent"),
    ("etc", "aggregator"), ("var", "lib", "aggregator"), ("run", "secrets"),
    ("etc", "redflag"), ("var", "lib", "redflag"), ("var", "log", "redflag"),
)
MAX_SMALL_FILE = 1024 * 1024  # config.json, migration_state.json, status.json, manifests
MAX_FILE = 16 * 1024 * 1024  # legacy files copied into a backup (keys, certs, acks)
MAX_DEPTH = 32  # directory nesting walked or removed below an agent directory
MAX_ENTRIES = 10000  # entries walked in one tree

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class UnsafePath(Exception):
    """Something other than what root expects at a path the agent user can write."""

    def __init__(self, path: PathArg, found: str, expected: str) -> None:
        self.path = os.fspath(path)
        self.found = found
        super().__init__(
            f"{self.path}: found {found} where {expected} belongs; root does not follow, "
            "read or change what it did not expect in the agent's directories. Find out "
            "who put it there, move it away, and run again")


def caused_by(exc: Optional[BaseException]) -> Optional[UnsafePath]:
    """The UnsafePath behind an error (ConfigError and MigrationError wrap it), if any."""
    for _ in range(5):
        if exc is None or isinstance(exc, UnsafePath):
            return exc
        exc = exc.__cause__
    return None


def describe(st: os.stat_result) -> str:
    """What an lstat result is, in words."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISREG(mode):
        if st.st_nlink != 1:
            return f"a regular file with {st.st_nlink} hard links"
        return f"a regular file owned by uid {st.st_uid}"
    return "an object of unknown type"


def allowed_uids() -> set[int]:
    """Owners root may read or rewrite a file of: root, the agent user, and ourselves."""
    uids = {0, os.geteuid()}
    ids = owner.agent_ids()
    if ids is not None:
        uids.add(ids[0])
    return uids


def check_file(st: os.stat_result, path: PathArg, strict: bool = True) -> None:
    """Raise unless `st` is a regular file with (strict) one link and an expected owner."""
    if not stat.S_ISREG(st.st_mode) or strict and (st.st_nlink != 1
                                                   or st.st_uid not in allowed_uids()):
        raise UnsafePath(path, describe(st), "a regular file (one link, owned by root or "
                         "redflag-agent)")


def split(path: PathArg, strict: bool = False) -> tuple[str, tuple[str, ...]]:
    """(trusted anchor, components below it). The anchor is the parent of the first agent
    directory in the path (shallowest match); other paths are anchored at their parent,
    or refused when `strict` (a path from a manifest must lie in an agent directory)."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        text = os.path.abspath(text)
    parts = [p for p in text.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UnsafePath(path, "a '.' or '..' component", "a plain absolute path")
    for i in range(len(parts)):
        for top in AGENT_TOPS:
            if tuple(parts[i:i + len(top)]) == top:
                cut = i + len(top) - 1
                return "/" + "/".join(parts[:cut]), tuple(parts[cut:])
    if strict or not parts:
        raise UnsafePath(path, "a path outside the agent's directories",
                         "a path below /etc/redflag-agent, /var/lib/redflag-agent or an "
                         "upstream layout's directories")
    return "/" + "/".join(parts[:-1]), (parts[-1],)


def _open_anchor(anchor: str, create: bool, nearest: bool = False) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(anchor, flags)
    except FileNotFoundError:
        if create:
            os.makedirs(anchor, 0o755, exist_ok=True)
        elif nearest:
            # above the agent's directories: trusted, walked up by path
            while not os.path.isdir(anchor) and anchor != "/":
                anchor = os.path.dirname(anchor)
        else:
            raise
        fd = os.open(anchor, flags)
    st = os.fstat(fd)
    # the anchor is trusted only while nobody but root (or we) can change it
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        os.close(fd)
        raise UnsafePath(anchor, f"a directory owned by uid {st.st_uid} with mode "
                         f"{stat.S_IMODE(st.st_mode):04o}",
                         "a directory only root can change")
    return fd


def lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _refused_dir(dir_fd: int, name: str, path: str) -> UnsafePath:
    st = lstat_at(dir_fd, name)
    return UnsafePath(path, describe(st) if st else "nothing usable", "a directory")


def fchown_agent(fd: int) -> None:
    """Give an open file or directory to the agent user when we are root and it exists."""
    if os.geteuid() != 0:
        return
    ids = owner.agent_ids()
    if ids is not None:
        os.fchown(fd, ids[0], ids[1])


def _open_child(dir_fd: int, name: str, path: str, *, create: bool, mode: int,
                chown: bool) -> int:
    created = False
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=dir_fd)
            created = True
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refused_dir(dir_fd, name, path) from None
            raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refused_dir(dir_fd, name, path) from None
        raise
    if created:
        try:
            os.fchmod(fd, mode)  # mkdir's mode is cut by the umask
            if chown:
                fchown_agent(fd)
        except BaseException:
            os.close(fd)
            raise
    return fd


def open_subdir(dir_fd: int, name: str, path: PathArg) -> int:
    """The fd of the directory `name` inside an open directory, never through a symlink
    (UnsafePath naming what is there instead); FileNotFoundError when missing."""
    return _open_child(dir_fd, name, os.fspath(path), create=False, mode=0o700, chown=False)


def open_dir(path: PathArg, *, create: bool = False, mode: int = 0o750,
             chown: bool = True, nearest: bool = False) -> int:
    """A file descriptor of the directory `path`, reached without following any symlink
    below the anchor. create: make missing levels (mode, owned by the agent user as root).
    nearest: when a level is missing, the deepest existing one (nothing is created).
    FileNotFoundError when missing (and neither), UnsafePath when something else is there."""
    anchor, parts = split(path)
    fd = _open_anchor(anchor, create, nearest)
    current = anchor
    try:
        for name in parts:
            current = f"{current.rstrip('/')}/{name}"
            try:
                child = _open_child(fd, name, current, create=create, mode=mode, chown=chown)
            except FileNotFoundError:
                if nearest:
                    return fd
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def directory(path: PathArg, **kwargs: bool) -> Iterator[int]:
    fd = open_dir(path, **kwargs)  # type: ignore[arg-type]
    try:
        yield fd
    finally:
        os.close(fd)


def _parent(path: PathArg) -> tuple[str, str]:
    text = os.fspath(path).rstrip("/")
    head, name = os.path.split(text)
    return head or "/", name


@contextlib.contextmanager
def parent_dir(path: PathArg, create: bool = False,
               mode: int = 0o750) -> Iterator[Optional[int]]:
    """The fd of the directory holding `path`, or None when that directory is missing."""
    head, _ = _parent(path)
    try:
        fd = open_dir(head, create=create, mode=mode)
    except FileNotFoundError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def open_file_at(dir_fd: int, name: str, path: PathArg, flags: int = os.O_RDONLY, *,
                 strict: bool = True) -> Optional[int]:
    """Open a regular file we may trust, or None when missing. UnsafePath otherwise.
    strict=False drops the link-count and owner checks (for root's own /run/secrets, where
    a bind-mounted secret may belong to any host user)."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return None
    check_file(st, path, strict)  # before open: opening a device or FIFO may already do something
    try:
        fd = os.open(name, flags | _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise UnsafePath(path, "an object that changed while it was opened",
                             "a regular file") from None
        raise
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise UnsafePath(path, "an object that changed while it was opened",
                             "a regular file")
        check_file(now, path, strict)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, limit: int, path: PathArg) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise UnsafePath(path, f"a file larger than {limit} bytes", "a small file")


def read_at(dir_fd: int, name: str, path: PathArg, limit: int = MAX_SMALL_FILE, *,
            strict: bool = True) -> Optional[bytes]:
    fd = open_file_at(dir_fd, name, path, strict=strict)
    if fd is None:
        return None
    try:
        return _read_fd(fd, limit, path)
    finally:
        os.close(fd)


def read_bytes(path: PathArg, limit: int = MAX_SMALL_FILE, *,
               strict: bool = True) -> Optional[bytes]:
    """The file's bytes, or None when it (or its directory) does not exist."""
    with parent_dir(path) as dfd:
        if dfd is None:
            return None
        return read_at(dfd, _parent(path)[1], path, limit, strict=strict)


def lstat(path: PathArg) -> Optional[os.stat_result]:
    """lstat through a safely opened parent; None when missing."""
    with parent_dir(path) as dfd:
        return None if dfd is None else lstat_at(dfd, _parent(path)[1])


def kind(path: PathArg) -> str:
    """'missing', 'file', 'dir', 'symlink' or 'other' (never follows the last component)."""
    st = lstat(path)
    if st is None:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def listdir(path: PathArg) -> list[str]:
    """Sorted names in a directory; [] when it does not exist."""
    try:
        fd = open_dir(path)
    except FileNotFoundError:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def readlink(path: PathArg) -> str:
    head, name = _parent(path)
    with directory(head) as dfd:
        return os.readlink(name, dir_fd=dfd)


def write_at(dir_fd: int, name: str, path: PathArg, data: bytes, mode: int = 0o600,
             *, chown: bool = True) -> None:
    """Atomic replace inside an open directory: temp file O_EXCL|O_NOFOLLOW, owner and mode
    on the fd, write, fsync, rename, fsync the directory. Refuses to replace anything but a
    plain file we may rewrite."""
    st = lstat_at(dir_fd, name)
    if st is not None:
        check_file(st, path)
    # a random name, as mkstemp makes, without its import cost at start-up
    tmp = f".{name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        try:
            if chown:
                fchown_agent(fd)
            # mode before the data lands so secrets are never readable by others
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def write_bytes(path: PathArg, data: bytes, mode: int = 0o600, *, create_dirs: bool = False,
                dir_mode: int = 0o750, chown: bool = True) -> None:
    head, name = _parent(path)
    with directory(head, create=create_dirs, mode=dir_mode) as dfd:
        write_at(dfd, name, path, data, mode, chown=chown)


def fsync_dir(path: PathArg) -> None:
    with directory(path) as fd:
        os.fsync(fd)


def fsync_parent(path: PathArg) -> None:
    """fsync the directory holding `path` (for an agent directory: its trusted anchor)."""
    anchor, parts = split(path)
    if len(parts) > 1:
        fsync_dir(_parent(path)[0])
        return
    fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: PathArg, mode: int = 0o750) -> None:
    """mkdir -p below the anchor; every new level gets `mode` and (as root) the agent user."""
    os.close(open_dir(path, create=True, mode=mode))


def _set(fd: int, mode: Optional[int], uid: Optional[int], gid: Optional[int]) -> None:
    if uid is not None and os.geteuid() == 0:
        os.fchown(fd, uid, -1 if gid is None else gid)
    if mode is not None:
        os.fchmod(fd, mode)


def set_attrs(path: PathArg, mode: Optional[int] = None, uid: Optional[int] = None,
              gid: Optional[int] = None, *, expect: str = "file") -> bool:
    """chmod/chown a file or directory through an fd (never a symlink). False when missing.
    uid/gid apply only as root (a non-root chown to others fails anyway)."""
    if expect == "dir":
        try:
            fd = open_dir(path)
        except FileNotFoundError:
            return False
    else:
        head, name = _parent(path)
        with parent_dir(path) as dfd:
            if dfd is None:
                return False
            opened = open_file_at(dfd, name, path)
        if opened is None:
            return False
        fd = opened
        del head
    try:
        _set(fd, mode, uid, gid)
    finally:
        os.close(fd)
    return True


def chown_agent(path: PathArg, expect: str = "dir") -> bool:
    """Give a directory (or file) to the agent user when root and it exists."""
    ids = owner.agent_ids()
    if os.geteuid() != 0 or ids is None:
        return False
    return set_attrs(path, None, ids[0], ids[1], expect=expect)


def _rmtree_at(parent_fd: int, name: str, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise UnsafePath(path, f"directories nested more than {MAX_DEPTH} levels deep",
                         "a shallow directory tree")
    fd = open_subdir(parent_fd, name, path)
    try:
        for entry in os.listdir(fd):
            st = lstat_at(fd, entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                _rmtree_at(fd, entry, f"{path}/{entry}", depth + 1)
            else:
                os.unlink(entry, dir_fd=fd)  # a symlink goes, never what it points to
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def remove_at(dir_fd: int, name: str, path: PathArg) -> bool:
    """Remove a file, a symlink (not its target) or a whole tree. False when missing."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        _rmtree_at(dir_fd, name, os.fspath(path), 0)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return True


def remove(path: PathArg) -> bool:
    with parent_dir(path) as dfd:
        return False if dfd is None else remove_at(dfd, _parent(path)[1], path)


def rmdir(path: PathArg) -> None:
    head, name = _parent(path)
    with directory(head) as dfd:
        os.rmdir(name, dir_fd=dfd)


def rename(src: PathArg, dst: PathArg) -> None:
    """rename(2) between two safely opened directories (neither end is followed)."""
    shead, sname = _parent(src)
    dhead, dname = _parent(dst)
    with directory(shead) as sfd, directory(dhead) as dfd:
        os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        os.fsync(dfd)


def symlink(target: str, path: PathArg) -> None:
    head, name = _parent(path)
    with directory(head) as dfd:
        os.symlink(target, name, dir_fd=dfd)


def tree(path: PathArg) -> list[tuple[str, os.stat_result]]:
    """Every entry below the directory `path` (pre-order, sorted), with its lstat; symlinks
    are listed, never followed. [] when `path` does not exist."""
    try:
        fd = open_dir(path)
    except FileNotFoundError:
        return []
    out: list[tuple[str, os.stat_result]] = []
    try:
        _walk(fd, os.fspath(path).rstrip("/"), out, 0)
    finally:
        os.close(fd)
    return out


def _walk(fd: int, path: str, out: list[tuple[str, os.stat_result]], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise UnsafePath(path, f"directories nested more than {MAX_DEPTH} levels deep",
                         "a shallow directory tree")
    for name in sorted(os.listdir(fd)):
        st = lstat_at(fd, name)
        if st is None:
            continue
        child = f"{path}/{name}"
        out.append((child, st))
        if len(out) > MAX_ENTRIES:
            raise UnsafePath(path, f"more than {MAX_ENTRIES} entries", "a small directory tree")
        if stat.S_ISDIR(st.st_mode):
            sub = open_subdir(fd, name, child)
            try:
                _walk(sub, child, out, depth + 1)
            finally:
                os.close(sub)
