"""A directory only this user can use, for files Cellar hands to its child processes.

Never a predictable name in /tmp: another local user could create it first, or plant files in
it. The directory is `<user cache>/cellar/run/<purpose>` (`$XDG_CACHE_HOME` honoured), created
0700, and refused unless it is a real directory owned by this user that nobody else can write
or read.
Worker sockets live apart, in a directory of their own per gateway process (`socket_path`).
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import stat
import tempfile
from pathlib import Path

import platformdirs

from cellar.errors import ConfigError


def private_dir(purpose: str) -> Path:
    folder = Path(platformdirs.user_cache_dir("cellar")) / "run" / purpose
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    for path in (folder.parent, folder):
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigError(f"{path} is not a directory of this user's; refusing to use it")
        if info.st_mode & 0o077:
            os.chmod(path, 0o700)  # ours, but too open: close it before use
    return folder


def write_private(folder: Path, name: str, data: bytes) -> Path:
    """`folder/name` holding exactly `data`, written afresh (an existing file is never
    trusted) and replaced atomically, mode 0600."""
    path = folder / name
    partial = folder / f".{name}.{os.getpid()}.tmp"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


_SUN_PATH_MAX = 100
"""Bytes of a Unix socket's path that every platform accepts (Linux 108, macOS 104)."""
_sockets: Path | None = None
_launches = itertools.count(1)


def socket_path() -> Path:
    """A fresh Unix socket path for one worker launch, in this process's socket directory.

    The directory is made once per process by `mkdtemp` (mode 0700, a random name created
    atomically, so no other user can own it, enter it or bind there first) in the temporary
    directory, or in /tmp when that path is too long for a socket; it is removed at exit.
    """
    global _sockets
    if _sockets is None:
        base = tempfile.gettempdir()
        if len(base) > _SUN_PATH_MAX - 40:
            base = "/tmp"
        _sockets = Path(tempfile.mkdtemp(prefix="cellar-", dir=base))
        atexit.register(shutil.rmtree, _sockets, True)
    return _sockets / f"w{next(_launches)}.sock"
