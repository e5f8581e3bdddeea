"""Configuration loading: one YAML file → a validated, frozen :class:`~gateway.settings.Settings`.

Why it is strict: the gateway runs unattended in a substation; a typo found at 3 a.m. by a
meter that is never polled costs far more than a refusal at ``validate`` time. So every
check happens here, before anything starts (and on reload, where an invalid file is refused
and the running configuration stays), and a load reports **every** problem found, each as a
:class:`~gateway.errors.ConfigIssue` with file, line and one sentence saying what to change.
No I/O happens at load except reading the file itself, the referenced profiles and secret
files: no port is opened and no host is contacted.

The package is cut by section: :mod:`gateway.config.loader` walks the file and calls one
module per section (``gateway``, ``buses``, ``meters``, ``schedules``, ``billing``, ``mqtt``,
``influxdb``, ``api``, ``store``, ``review``), each holding that section's keys and checks;
:mod:`gateway.config.context` holds the state of one load and the helpers every section
uses (secrets, paths, lists), :mod:`gateway.config.convert` the shared value converters. The models themselves stay in
:mod:`gateway.settings`: the core and the drivers import them without the YAML loader, and
moving them here would make every import of a model run this package (``gateway.profiles``
→ models → ``gateway.config`` → ``gateway.profiles`` would be a cycle).

Decisions worth knowing (also documented in ``config/gateway.example.yaml``):

* Relative paths (``data_dir``, ``profiles_dir``, ``*_file``) are relative to the directory
  of the configuration file, not to the working directory.
* Profiles are looked up in ``profiles_dir`` (top level or under ``gateway``), then
  ``<config dir>/profiles/``, then the repository's shipped ``config/profiles/`` (in an
  installed wheel, which has no ``config/``, each protocol package's
  ``drivers/<protocol>/profiles/`` instead), then ``gateway/defaults/profiles/`` when it
  exists. Only the
  profiles that meters reference are loaded; a broken one is reported with its own file
  and line.
* Bus defaults depend on the protocol and come from its package's descriptor
  (``drivers/<family>/descriptor.py``, see ``drivers/README.md``): baud rate, reply timeout,
  TCP port (a protocol without one, such as a serial server's, must give the port), and
  whether a TCP bus may run several transactions. Parity E, 8 data bits, 1 stop bit.
* A meter's address is checked and normalised by its protocol's descriptor (a unit id kept
  as its decimal text, a 12-digit address kept as text; an unquoted address with leading
  zeros is refused, because YAML and any other tool reading the file drop the zeros).
  An unknown protocol is an error naming the installed ones.
* Durations in schedules and billing plans carry a unit (``30s``, ``15m``, ``1h``, ``1d``,
  ``500ms``, or combined ``1h30m``); a bare number is refused rather than guessed. An
  aligned schedule's interval must divide a day, so slots fall on the same wall-clock
  times every day. Its priority defaults to ``realtime`` below 5 minutes, else ``interval``.
* A meter without ``schedules`` is polled on every defined schedule.
* Secrets (MQTT password, InfluxDB and API tokens) can be given as ``<name>_env`` (an
  environment variable) or ``<name>_file`` (a file whose whitespace-trimmed content is the
  secret); inline values are accepted for bench work and logged as a warning. The API token
  falls back to the ``AMR_API_TOKEN`` environment variable.
* ``store.max_size`` takes decimal (``KB``, ``MB``, ``GB``, ``TB`` = powers of 1000) or
  binary units (``KiB`` … ``TiB`` = powers of 1024), or a plain number of bytes; so does
  ``store.min_free`` (default 32MB).
* ``store.commit_interval`` (a duration, default ``1s``) bounds how long a reading waits for
  its commit; ``store.commit_interval_ms`` (a number of milliseconds) is its older spelling,
  still accepted, one or the other. ``store.max_pending`` (default 20000) caps the readings
  held in memory while commits fail (gateway/store.py says what is dropped first).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from gateway.config.api import DEFAULT_API_TOKEN_ENV
from gateway.config.buses import STANDARD_BAUDRATES, protocols_for
from gateway.config.convert import parse_duration
from gateway.config.loader import load
from gateway.config.meters import parse_ratio
from gateway.config.profile_dirs import PACKAGED_PROFILES_DIR, SHIPPED_PROFILES_DIR, profile_search_dirs
from gateway.errors import ConfigError, ConfigIssue
from gateway.settings import Settings


def load_settings(path: Path, *, env: Mapping[str, str] | None = None) -> Settings:
    """Load and validate the configuration file at ``path``.

    ``env`` replaces ``os.environ`` for ``*_env`` secrets (tests pass their own). Raises
    ConfigError carrying every issue found when the file is not valid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(path), None,
                                       "the file is not UTF-8 text; save it as UTF-8")]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(str(path), None,
                                       f"cannot read the configuration ({reason}); check the path")]
                          ) from None
    return load(text, str(path), path.parent, env, source=path)


def load_settings_from_text(
    text: str,
    name: str = "<embedded>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate configuration text (the demo's embedded configuration).

    ``name`` is the file name issues carry; ``base_dir`` (default: the working directory)
    anchors relative paths and the ``profiles/`` search directory.
    """
    return load(text, name, base_dir if base_dir is not None else Path.cwd(), env, source=None)


def validate_command(path: Path) -> int:
    """``amr-gateway validate``: print a summary (exit 0) or every issue to stderr (exit 2)."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 2
    print(f"OK: {len(settings.buses)} buses, {len(settings.meters)} meters, "
          f"{len(settings.schedules)} schedules")
    return 0


__all__ = [
    "DEFAULT_API_TOKEN_ENV",
    "PACKAGED_PROFILES_DIR",
    "SHIPPED_PROFILES_DIR",
    "STANDARD_BAUDRATES",
    "load_settings",
    "load_settings_from_text",
    "parse_duration",
    "parse_ratio",
    "profile_search_dirs",
    "protocols_for",
    "validate_command",
]
