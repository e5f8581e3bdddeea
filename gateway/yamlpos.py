"""Line-aware YAML reading for configuration and profile files.

Why this exists: a configuration error is only useful when it names the file and the line
to change. ``yaml.safe_load`` throws positions away, so this module works on the node tree
from ``yaml.compose`` (every node carries ``start_mark``) and converts scalars itself.
Working from the node also gives the scalar's exact source text, which matters twice:

* ``scale: 0.1`` becomes ``Decimal("0.1")`` exactly, never a binary float;
* a value YAML 1.1 would silently reinterpret (``12:30`` as the base-60 integer 750,
  ``0123`` as octal) is still available as the text the user wrote.

The pieces:

* :class:`Issues` collects :class:`~gateway.errors.ConfigIssue` for one file, so a load
  reports every problem, not just the first.
* :func:`compose` parses text into a node tree, turning syntax errors into issues.
* :class:`MapView` wraps one mapping: it rejects unknown keys (listing the accepted ones and
  suggesting the closest), duplicate keys and non-text keys, and reads typed values with
  ``get`` / ``opt`` / ``req`` through small converters.
* Converters (``as_text``, ``as_int(...)``, ``as_bool`` ...) take a node and return a value
  or raise :class:`Invalid` with the end of a sentence ("must be a whole number, not ...");
  the view prefixes it with where the value is.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Final, TypeVar

import yaml

from gateway.errors import ConfigIssue

T = TypeVar("T")

Node = yaml.Node
Converter = Callable[[yaml.Node], T]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"


class Invalid(Exception):
    """A converter's complaint: the rest of a sentence after the value's name."""


class Issues:
    """Every problem found in one file, in the order found."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigIssue] = []

    def add(self, where: yaml.Node | int | None, message: str) -> None:
        """Record ``message`` at a node's first line, at a 1-based line, or for the file."""
        line = line_of(where) if isinstance(where, yaml.Node) else where
        self.items.append(ConfigIssue(self.file, line, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)


def line_of(node: yaml.Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def compose(text: str, issues: Issues) -> yaml.Node | None:
    """Parse YAML text into a node tree; a syntax error becomes an issue with its line.

    Returns None (with an issue recorded) when the text is not valid YAML, is empty, or
    holds more than one document.
    """
    try:
        # libyaml's parser when present: 3-4x faster and far less memory on a 10,000-meter
        # file; on a syntax error PyYAML's own parser is asked again for its clearer message.
        try:
            node = yaml.compose(text, Loader=_LOADER)
        except yaml.YAMLError:
            if _LOADER is yaml.SafeLoader:
                raise
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line, message = syntax_error_message(exc)
        issues.add(line, message)
        return None
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML marks all it can
        issues.add(None, f"YAML syntax error ({exc}); fix the file's syntax")
        return None
    if node is None:
        issues.add(1, "the file is empty; write the settings as a YAML mapping")
        return None
    return node


_UNCLOSED: Final = {"while parsing a flow sequence": "[", "while parsing a flow mapping": "{",
                    "while scanning a quoted scalar": "quote"}
"""PyYAML contexts whose mark is where an unclosed bracket or quote starts."""


_INDENTATION: Final = ("<block end>", "mapping values are not allowed here", "did not find expected key",
                       "did not find expected '-' indicator")
"""PyYAML problems that, outside brackets, mean a line indented one way or the other too far."""


def syntax_error_message(exc: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    """The line to report a YAML syntax error at, and the message saying what to fix.

    PyYAML marks a problem where it noticed it (``problem_mark``), which for an unclosed
    ``[``, ``{`` or quote is wherever the parser gave up, often the end of the file. Its
    ``context_mark`` is where the unclosed construct started: that line and column are the
    ones a user has to look at, so they are reported instead.
    """
    problem = (exc.problem or exc.context or "invalid YAML").strip()
    opener = _UNCLOSED.get((exc.context or "").strip())
    start = exc.context_mark
    if opener is not None and start is not None:
        what = f'the "{opener}"' if opener != "quote" else "the quote"
        found = (f" on line {int(exc.problem_mark.line) + 1}"
                 if exc.problem_mark is not None else "")
        return (int(start.line) + 1,
                f"YAML syntax error: {what} opened at column {int(start.column) + 1} is never "
                f"closed (the parser stopped{found}: {problem}); close it on this line")
    mark = exc.problem_mark or exc.context_mark
    line = int(mark.line) + 1 if mark is not None else None
    column = f" at column {int(mark.column) + 1}" if mark is not None else ""
    if "'\\t'" in problem:
        return line, (f"YAML syntax error{column}: a tab character; YAML indents with spaces only, "
                      "replace the tab with spaces")
    if any(sign in problem for sign in _INDENTATION):
        return line, (f"YAML syntax error{column} ({problem}); check this line's indentation: the keys "
                      "of one mapping start in the same column as the key above them, and a value "
                      "holding \": \" needs quotes")
    return line, f"YAML syntax error{column} ({problem}); fix the syntax on this line"


def describe(node: yaml.Node) -> str:
    """A short description of a node for "..., not X" messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "empty"
    if getattr(node, "style", None) in ("'", '"') and node.tag == _STR:
        return f'the quoted text "{node.value}" (remove the quotes)'
    return f'"{node.value}"'


def quoted_list(names: Iterable[str]) -> str:
    """``a, b, c`` (sorted) or ``(none)`` when there is nothing to list."""
    items = sorted(names)
    return ", ".join(items) if items else "(none)"


def suggest(word: str, choices: Iterable[str]) -> str:
    """``' (did you mean "x"?)'`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


# ---------------------------------------------------------------------------------------
# converters


def scalar_text(node: yaml.Node) -> str:
    """The source text of a non-empty scalar, whatever type YAML resolved it to."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
        raise Invalid(f"must be a single value, not {describe(node)}")
    return str(node.value)


def is_unquoted_number(node: yaml.Node) -> bool:
    """True for a plain scalar YAML reads as a number (``0123``, ``5``, ``1.5``)."""
    return isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT)


def is_plain(node: yaml.Node) -> bool:
    """True for an unquoted scalar (one whose meaning YAML infers from its text)."""
    # PyYAML's own parser marks a plain scalar with style None, libyaml's with ''
    return isinstance(node, yaml.ScalarNode) and not node.style


def as_text(node: yaml.Node) -> str:
    """Text: any non-empty scalar except a boolean, taken as the user wrote it."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
        raise Invalid(f'must be text, not the boolean {node.value}; quote it ("{node.value}")')
    text = scalar_text(node)
    if not text.strip():
        raise Invalid("must not be empty")
    return text


def as_bool(node: yaml.Node) -> bool:
    """A YAML boolean: true or false."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
        return str(node.value).lower() in ("true", "yes", "on")
    raise Invalid(f"must be true or false, not {describe(node)}")


def _int_value(node: yaml.Node) -> int:
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT:
        value = yaml.SafeLoader("").construct_yaml_int(node)
        return int(value)
    raise Invalid(f"must be a whole number, not {describe(node)}")


def as_int(lo: int | None = None, hi: int | None = None) -> Converter[int]:
    """A converter for a whole number within [lo, hi] (either bound optional)."""

    def convert(node: yaml.Node) -> int:
        value = _int_value(node)
        _check_range(value, lo, hi)
        return value

    return convert


def as_int_choice(choices: Sequence[int]) -> Converter[int]:
    """A converter for one of a few whole numbers (a function code 3 or 4, stop bits 1 or 2)."""

    def convert(node: yaml.Node) -> int:
        try:
            value: int | None = _int_value(node)
        except Invalid:
            value = None
        if value is None or value not in choices:
            raise Invalid(f"must be {' or '.join(map(str, choices))}, not {describe(node)}")
        return value

    return convert


def _check_range(value: float | int | Decimal, lo: float | None, hi: float | None) -> None:
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise Invalid(f"must be between {_num(lo)} and {_num(hi)}, not {_num(value)}")
    if lo is not None and value < lo:
        raise Invalid(f"must be at least {_num(lo)}, not {_num(value)}")
    if hi is not None and value > hi:
        raise Invalid(f"must be at most {_num(hi)}, not {_num(value)}")


def _num(value: float | int | Decimal) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def as_decimal(node: yaml.Node) -> Decimal:
    """An exact decimal number, read from the scalar's text (``0.1`` stays 0.1 exactly)."""
    if isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT, _STR):
        text = str(node.value).strip().replace("_", "")
        try:
            if node.tag == _INT:
                return Decimal(_int_value(node))
            value = Decimal(text)
        except (InvalidOperation, ValueError, Invalid):
            pass
        else:
            if value.is_finite():
                return value
    raise Invalid(f"must be a number, not {describe(node)}")


def as_float(lo: float | None = None, hi: float | None = None) -> Converter[float]:
    """A converter for a number (int or decimal) within [lo, hi]."""

    def convert(node: yaml.Node) -> float:
        if not (isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT)):
            raise Invalid(f"must be a number, not {describe(node)}")
        value = float(as_decimal(node))
        _check_range(value, lo, hi)
        return value

    return convert


def as_choice(choices: Sequence[str], *, fold_case: bool = False) -> Converter[str]:
    """A converter for one of a fixed set of words (optionally case-insensitive)."""

    def convert(node: yaml.Node) -> str:
        text = scalar_text(node) if isinstance(node, yaml.ScalarNode) else None
        if text is not None:
            for choice in choices:
                if text == choice or (fold_case and text.lower() == choice.lower()):
                    return choice
        got = describe(node)
        hint = suggest(text, choices) if text is not None else ""
        raise Invalid(f"must be one of {', '.join(choices)}, not {got}{hint}")

    return convert


# ---------------------------------------------------------------------------------------
# mappings


class MapView:
    """One YAML mapping, checked against the keys its section accepts.

    ``accepted=None`` takes any text key (mappings keyed by user-chosen names).

    Construction records issues for a non-mapping node, non-text keys, duplicate keys and
    unknown keys (with the accepted keys and the closest match). The reading methods record
    an issue and return the fallback when a value is missing or wrong, so the caller keeps
    going and the user sees every problem in one run.
    """

    def __init__(
        self,
        issues: Issues,
        node: yaml.Node | None,
        where: str,
        accepted: Iterable[str] | None,
        *,
        line: int | None = None,
    ) -> None:
        self.issues = issues
        self.where = where
        self.accepted = tuple(accepted) if accepted is not None else None
        self.values: dict[str, yaml.Node] = {}
        self.keys: dict[str, yaml.Node] = {}
        self.ok = True
        self.suggested: set[str] = set()  # accepted keys an unknown key looked like
        self.line: int | None = line_of(node) if node is not None else line
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
            return  # absent, or a key whose every sub-key is commented out: all defaults
        if not isinstance(node, yaml.MappingNode):
            self.ok = False
            issues.add(node, f"{where} must be a mapping of keys to values, not {describe(node)}")
            return
        try:
            yaml.SafeLoader("").flatten_mapping(node)  # resolve "<<: *anchor" merges
        except yaml.MarkedYAMLError as exc:
            issues.add(node, f"{where}: cannot merge ({exc.problem}); fix the merge key")
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL:
                issues.add(key_node, f"{where}: keys must be plain names, not {describe(key_node)}")
                continue
            key = str(key_node.value)
            if key in self.keys:
                first = line_of(self.keys[key])
                issues.add(key_node, f'{where}: key "{key}" is given twice (first on line {first}); '
                           "keep only one")
                continue
            if self.accepted is not None and key not in self.accepted:
                close = difflib.get_close_matches(key, self.accepted, n=1, cutoff=0.6)
                self.suggested.update(close)
                issues.add(
                    key_node,
                    f'{where}: unknown key "{key}"{suggest(key, self.accepted)}; '
                    f"accepted keys are {', '.join(sorted(self.accepted))}",
                )
                continue
            self.keys[key] = key_node
            self.values[key] = value_node

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def node(self, key: str) -> yaml.Node | None:
        """The value node of ``key``, or None when absent (or unknown)."""
        return self.values.get(key)

    def key_line(self, key: str) -> int | None:
        """The line of ``key`` itself, or the mapping's line when absent."""
        node = self.keys.get(key)
        return line_of(node) if node is not None else self.line

    def value_line(self, key: str) -> int | None:
        """The line of ``key``'s value, or the mapping's line when absent."""
        node = self.values.get(key)
        return line_of(node) if node is not None else self.line

    def bad(self, key: str, message: str) -> None:
        """Record an issue about ``key``'s value (at the value's line)."""
        self.issues.add(self.value_line(key), f"{self.where}: {key} {message}")

    def convert(self, key: str, conv: Converter[T]) -> T | None:
        """Convert ``key``'s value if present; None when absent or invalid (issue recorded)."""
        node = self.values.get(key)
        if node is None:
            return None
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
            self.bad(key, "has no value; give one or remove the key")
            return None
        try:
            return conv(node)
        except Invalid as exc:
            self.bad(key, str(exc))
            return None

    def get(self, key: str, conv: Converter[T], default: T) -> T:
        """``key``'s value, or ``default`` when absent or invalid."""
        value = self.convert(key, conv)
        return default if value is None else value

    def opt(self, key: str, conv: Converter[T]) -> T | None:
        """``key``'s value, or None when absent or invalid."""
        return self.convert(key, conv)

    def req(self, key: str, conv: Converter[T], hint: str = "") -> T | None:
        """``key``'s value; a missing key is an issue at the mapping's line."""
        if key not in self.values:
            if self.ok and key not in self.suggested:
                extra = f" ({hint})" if hint else ""
                self.issues.add(self.line, f'{self.where}: the required key "{key}" is missing; '
                                f"add it{extra}")
            return None
        return self.convert(key, conv)
