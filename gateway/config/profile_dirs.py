"""Where meter profiles are looked up: the configuration's own directories, then the shipped ones.

The shipped ones are ``config/profiles/`` in a checkout (links to each protocol package's
``drivers/<protocol>/profiles/``) and, in an installed wheel, which has no ``config/``, the
packages' directories themselves (:func:`gateway.profiles.shipped_profile_dirs`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import gateway
from gateway.config.convert import abs_path
from gateway.profiles import REPO_PROFILES_DIR, shipped_profile_dirs

SHIPPED_PROFILES_DIR: Final = REPO_PROFILES_DIR
"""The profiles shipped in the repository, searched after the configuration's own."""

PACKAGED_PROFILES_DIR: Final = Path(gateway.__file__).resolve().parent / "defaults" / "profiles"
"""Profiles packaged inside the wheel (``gateway/defaults/profiles``), searched last when present."""


def profile_search_dirs(base_dir: Path, profiles_dir: Path | None = None) -> list[Path]:
    """Where profiles are looked up, in order (duplicates removed)."""
    base_dir = Path(os.path.abspath(base_dir))
    dirs: list[Path] = []
    packaged = PACKAGED_PROFILES_DIR if PACKAGED_PROFILES_DIR.is_dir() else None
    for candidate in (profiles_dir, base_dir / "profiles", *shipped_profile_dirs(), packaged):
        if candidate is None:
            continue
        directory = abs_path(base_dir, candidate)
        if directory not in dirs:
            dirs.append(directory)
    return dirs
