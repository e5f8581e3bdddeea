"""The state of one configuration load and the helpers every section uses.

A :class:`LoadContext` holds the issues found so far, the environment (for ``*_env``
secrets), where relative paths start, and the profile files' own issues; the section
modules (``gateway.config.buses``, ``.meters`` ...) take it as their first argument.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import cast

import yaml

from gateway.config.convert import abs_path, ident
from gateway.errors import ConfigIssue
from gateway.yamlpos import Invalid, Issues, MapView, as_text, describe

log = logging.getLogger("gateway.config")


def peek(node: yaml.Node, key: str) -> yaml.Node | None:
    """The value node of ``key`` in a mapping node, before the mapping is validated."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return cast(yaml.Node, v)
    return None


def peek_text(node: yaml.Node, key: str) -> str | None:
    """The text of ``key`` in a mapping node (None when absent or not a scalar), to name an item."""
    value = peek(node, key)
    if isinstance(value, yaml.ScalarNode) and value.tag != "tag:yaml.org,2002:null":
        return str(value.value)
    return None


class LoadContext:
    """One load: the issues found so far, the environment, and where relative paths start."""

    def __init__(self, file: str, base_dir: Path, env: Mapping[str, str]) -> None:
        self.declared_buses: set[str] = set()  # ids of buses written, valid or not
        self.issues = Issues(file)
        self.base_dir = base_dir
        self.env = env
        self.profile_issues: list[ConfigIssue] = []

    # -- helpers ----------------------------------------------------------------------

    def seq(self, node: yaml.Node | None, where: str, example: str) -> list[yaml.Node]:
        """The items of a list node (a missing or null node is an empty list; another kind is reported)."""
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.issues.add(node, f"{where} must be a list ({example}), not {describe(node)}")
            return []
        return list(node.value)

    def named(self, node: yaml.Node | None, where: str) -> MapView:
        """A mapping of names to entries, with any names accepted."""
        return MapView(self.issues, node, where, None)

    def path(self, m: MapView, key: str) -> Path | None:
        """The path under ``key``, made absolute against the configuration's directory."""
        text = m.opt(key, as_text)
        return abs_path(self.base_dir, Path(text)) if text is not None else None

    def secret(self, m: MapView, base: str, env_default: str | None = None) -> str | None:
        """Resolve ``base`` / ``base_env`` / ``base_file`` into the secret's value."""
        keys = [k for k in (base, f"{base}_env", f"{base}_file") if k in m]
        if len(keys) > 1:
            self.issues.add(m.key_line(keys[1]), f"{m.where}: give only one of {', '.join(keys)}; "
                            "remove the others")
            return None
        if base in m:
            value = m.opt(base, as_text)
            if value is not None:
                log.warning("%s: %s is written inline in the configuration; prefer %s_env or "
                            "%s_file so the file can be shared", m.where, base, base, base)
            return value
        if f"{base}_env" in m:
            name = m.opt(f"{base}_env", as_text)
            if name is None:
                return None
            value = self.env.get(name)
            if not value:
                m.bad(f"{base}_env", f'names the environment variable "{name}", which is not set '
                      f"or empty; set it or use {base}_file")
                return None
            return value
        if f"{base}_file" in m:
            path = self.path(m, f"{base}_file")
            if path is None:
                return None
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                m.bad(f"{base}_file", f"names {path}, which cannot be read ({reason}); create it "
                      "or fix the path")
                return None
            if not value:
                m.bad(f"{base}_file", f"names {path}, which is empty; put the {base} in it")
                return None
            return value
        if env_default is not None:
            return self.env.get(env_default) or None
        return None

    def named_entries(
        self, top: MapView, section: str, label: str, keys: tuple[str, ...]
    ) -> Iterator[tuple[str, MapView]]:
        """The valid ``name: {mapping}`` entries of a section, each as a MapView (bad names reported)."""
        names = self.named(top.node(section), section)
        for name, node in names.values.items():
            try:
                ident(names.keys[name])
            except Invalid as exc:
                self.issues.add(names.keys[name], f"{label} name {exc}")
                continue
            m = MapView(self.issues, node, f'{label} "{name}"', keys)
            if m.ok:
                yield name, m

    def text_items(self, m: MapView, key: str) -> list[tuple[yaml.Node, str]]:
        """The text items of a list key (a single scalar counts as a list of one); bad items reported."""
        node = m.node(key)
        if node is None:
            return []
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out: list[tuple[yaml.Node, str]] = []
        for item in items:
            try:
                out.append((item, as_text(item)))
            except Invalid as exc:
                self.issues.add(item, f"{m.where}: {key} item {exc}")
        return out
