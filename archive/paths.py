"""File names inside a model folder: validated at ingest and again at restore.

A stored path is POSIX, relative, and stays inside its folder: no ``..``,
no absolute or drive-letter or UNC form, no backslash, no NUL or control
character, no ``.git`` component, no empty component.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from weightvault.errors import UnsafePathError

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path, else raise UnsafePathError.

    >>> check_relative("onnx/model.onnx")
    'onnx/model.onnx'
    """
    if not isinstance(path, str) or not path:
        raise UnsafePathError(str(path), "empty name")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise UnsafePathError(path, "control or NUL character")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # os.walk's surrogate escapes of bytes that are not UTF-8
        raise UnsafePathError(path, "name is not valid UTF-8",
                              hint="rename the file, or leave it out with --exclude") from None
    if "\\" in path:
        raise UnsafePathError(path, "backslash in name")
    if path.startswith("/") or _DRIVE.match(path):
        raise UnsafePathError(path, "absolute path")
    parts = path.split("/")
    for part in parts:
        if part in ("", "."):
            raise UnsafePathError(path, "empty or '.' path component")
        if part == "..":
            raise UnsafePathError(path, "'..' escapes the folder")
        if part.lower() == ".git":
            raise UnsafePathError(path, "'.git' component")
    return path


_RESTORE_HINT = "a restore never writes through a symlink: remove it, or restore into another folder"


def safe_target(root: Path, rel: str, *, create: bool = True) -> Path:
    """Resolve ``rel`` under ``root`` without following symlinks, creating parents (with
    ``create=False`` only checking what exists: a restore checks every target before it writes).

    Raises UnsafePathError when a name is unsafe or a parent is a symlink or
    not a folder (a restore must never write outside ``root``).
    """
    check_relative(rel)
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if create:
                os.mkdir(current)
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(rel, f"{current} is a symlink or not a folder", hint=_RESTORE_HINT)
    target = current / rel.split("/")[-1]
    try:
        if stat.S_ISLNK(os.lstat(target).st_mode):
            raise UnsafePathError(rel, f"{target} is a symlink", hint=_RESTORE_HINT)
    except FileNotFoundError:
        pass
    return target
