"""The one rule for names that become file or folder names (family specs, task suites, uploaded task
files, export folders, analysis caches), and the check that a path stays inside its root.

A name is ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`` and never contains ``..``: no separators, no leading
dot, nothing a shell or a zip tool reads as a path. ``inside`` resolves symbolic links first, so a link
planted in the data folder that points elsewhere is refused too. Messages never show the server's
folders: they are shown to whoever sent the name.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PathError(ValueError):
    """A name or path that would be written outside where it belongs; the message says what to use."""


def safe_name(kind: str, name: object) -> str:
    """``name`` if it is safe to use as one file or folder name; PathError naming ``kind`` otherwise."""
    text = name if isinstance(name, str) else ""
    if not SAFE_NAME.fullmatch(text) or ".." in text:
        raise PathError(f"{kind} name {str(name)[:80]!r} is not allowed: use 1 to 64 letters, digits, '_', '-' "
                        f"or '.', starting with a letter or digit, without '..', '/' or spaces")
    return text


def inside(root: str | os.PathLike, path: str | os.PathLike, kind: str = "file") -> Path:
    """``path`` resolved (links followed) if it lies inside ``root``; PathError otherwise."""
    base = Path(root).resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(base):
        raise PathError(f"{kind} {Path(path).name!r} would be stored outside the app's data folder "
                        f"(through '..', an absolute path or a link); refused")
    return target


def child(root: str | os.PathLike, kind: str, name: object, suffix: str = "", under: str = "") -> Path:
    """``root / under / (name + suffix)`` for a checked ``name``, resolved and proven to stay inside
    ``root`` (so a link at ``root / under`` pointing elsewhere is refused as well)."""
    return inside(root, Path(root) / under / f"{safe_name(kind, name)}{suffix}", kind)
