"""Load a large configuration in a child process, so the parse's peak memory is not kept.

Validating a 10,000-meter file builds a YAML node tree with positions for every value:
about 100 MB at the peak, of which the finished :class:`~gateway.settings.Settings` keep
≈ 10 MB. CPython returns little of that memory to the system afterwards (its object
arenas stay pinned by the survivors), so a gateway that parsed its own file carried
≈ 130 MB from the parse alone — most of the 200 MB budget of a 10,000-meter box. A
``spawn`` child (safe with threads, so it also serves a SIGHUP reload) parses, validates
and returns the settings pickled; its memory is gone when it exits. Small files are
loaded in-process: a child costs ≈ 0.5 s of imports, more than they take to parse.

The result is the same as :func:`gateway.config.load_settings`: the same settings, the
same :class:`~gateway.errors.ConfigError` issues, the same warnings (logged by the child
to the same stderr).
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Final

from gateway.config import load_settings
from gateway.errors import ConfigError, ConfigIssue
from gateway.logsetup import setup_logging
from gateway.settings import Settings

log = logging.getLogger("amr.config")

#: Files at least this large are parsed in a child process (≈ 500 meters).
ISOLATE_FROM_BYTES: Final = 256 * 1024


def _child_load(path: str, level: str) -> tuple[Settings | None, list[ConfigIssue] | None]:
    """Runs in the child: load, and hand back the settings or the issues (both pickle)."""
    setup_logging(level)   # the parent's level and format for the warnings the parse logs
    try:
        return load_settings(Path(path)), None
    except ConfigError as exc:
        return None, exc.issues


def load_settings_isolated(path: Path, *, threshold: int = ISOLATE_FROM_BYTES) -> Settings:
    """:func:`~gateway.config.load_settings`, in a child process for files ≥ ``threshold`` bytes."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0                              # load_settings words the error
    if size < threshold:
        return load_settings(path)
    ctx = multiprocessing.get_context("spawn")
    try:
        with ctx.Pool(1) as pool:
            level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
            settings, issues = pool.apply(_child_load, (str(path), level))
    except (OSError, RuntimeError, EOFError) as exc:   # no child possible here: parse in-process
        log.debug("loading %s in a child process failed (%s); loading it here", path, exc)
        return load_settings(path)
    if issues is not None:
        raise ConfigError(issues)
    assert settings is not None
    return settings


__all__ = ["ISOLATE_FROM_BYTES", "load_settings_isolated"]
