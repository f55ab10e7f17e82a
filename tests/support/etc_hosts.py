"""The emulated hosts' names in /etc/hosts, as one marked block that is added and always removed.

Why /etc/hosts and not ``/etc/netns/NAME/hosts``: the names must resolve in the *root* namespace too
(mpirun resolves each hostfile entry to decide whether it is the local node, and slurmctld, srun and
salloc run there), and ``/etc/netns`` only exists for processes started by ``ip netns exec``, which
unshares a mount namespace per command; ``nsenter`` (the rsh agent, slurmd) does not. A name that no file
knows goes to DNS, which here means a query leaving the machine, which this workplace forbids. One block
in the shared /etc/hosts makes every name resolve from files in every namespace.

The block is written by replacing the file atomically (readers see the old or the new file, never a
half-written one: other engineers' processes resolve ``localhost`` meanwhile). Where /etc/hosts is a
mount point (containers) a rename is impossible and the file is rewritten in place. Callers hold the
hosts lock (:mod:`tests.support.hosts`), so no two fixtures edit it at once.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable

ETC_HOSTS = Path(os.environ.get("GMK_ETC_HOSTS", "/etc/hosts"))
BEGIN = "# >>> gmk emulated hosts (tests/support; removed when the fixture ends) >>>"
END = "# <<< gmk emulated hosts <<<"


def strip_block(text: str) -> str:
    """``text`` without our block (every copy of it, in case a crash left one behind)."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == BEGIN:
            inside = True
        elif inside and line.rstrip("\n") == END:
            inside = False
        elif not inside:
            out.append(line)
    return "".join(out)


def _write(text: str, path: Path) -> None:
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=".gmk-hosts-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.chown(tmp, st.st_uid, st.st_gid)
        try:
            os.replace(tmp, path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    path.write_text(text)  # /etc/hosts is a bind mount: rewrite in place


def add(entries: Iterable[tuple[str, str]], path: Path = ETC_HOSTS) -> None:
    """Put ``(address, name)`` pairs into the block (replacing an older block)."""
    text = strip_block(path.read_text())
    if text and not text.endswith("\n"):
        text += "\n"
    lines = [BEGIN] + [f"{addr}\t{name}" for addr, name in entries] + [END]
    _write(text + "\n".join(lines) + "\n", path)


def remove(path: Path = ETC_HOSTS) -> bool:
    """Remove the block; returns whether there was one."""
    text = path.read_text()
    stripped = strip_block(text)
    if stripped == text:
        return False
    _write(stripped, path)
    return True
