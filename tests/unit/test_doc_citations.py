"""Comments, docstrings and docs cite only files that exist in this repository.

A citation is a repository path (``docs/protocols/dlt645-2007.md``, ``gateway/store.py``,
``reference/…`` — a directory this repository does not have) or a bare Markdown file name, in a
comment or docstring of a Python file under gateway/, drivers/, tests/ or bench/, or anywhere
in a Markdown file there, in docs/ or the README. Each must name a file or directory of the
repository (a bare ``*.md`` name may also be a sibling of the citing file), so a reader can
follow it. The one exception is a directory the code searches only when a wheel packages it
(:data:`OPTIONAL`).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("gateway", "drivers", "tests", "bench", "docs")
TOP = r"(?:gateway|drivers|tests|bench|docs|config|scripts|systemd|reference)"
# a path from the repository root, not inside a longer path or URL: e.g. docs/delivery.md
REPO_PATH = re.compile(rf"(?<![\w./-]){TOP}/[\w.-]+(?:/[\w.-]+)*/?")
BARE_MD = re.compile(r"(?<![\w./-])[\w-]+\.md\b")
OPTIONAL = {
    "gateway/defaults/profiles": "profiles a wheel may package, searched when present (gateway/config/profile_dirs.py)",
}


def comments_and_docstrings(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python source."""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                yield body[0].lineno, body[0].value.value


def texts() -> Iterator[tuple[Path, int, str]]:
    """Every comment/docstring of the scanned Python files and every scanned Markdown file."""
    files = [ROOT / "README.md"]
    for top in SCANNED:
        files += sorted((ROOT / top).rglob("*.py")) + sorted((ROOT / top).rglob("*.md"))
    for path in files:
        if ".venv" in path.parts or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".md":
            for line, chunk in enumerate(text.splitlines(), 1):
                yield path, line, chunk
        else:
            for line, chunk in comments_and_docstrings(text):
                yield path, line, chunk


def citations(text: str) -> Iterator[str]:
    """The repository paths and bare ``*.md`` names ``text`` cites."""
    for m in REPO_PATH.finditer(text):
        yield m.group(0).rstrip(".")
    for m in BARE_MD.finditer(text):
        yield m.group(0)


def exists(cited: str, citing: Path) -> bool:
    """Whether ``cited`` names something in the repository (bare names: also beside ``citing``)."""
    if "/" in cited:
        return cited.rstrip("/") in OPTIONAL or (ROOT / cited).exists()
    return (citing.parent / cited).exists() or (ROOT / cited).exists()


def test_every_cited_repository_path_exists() -> None:
    missing = sorted({f"{path.relative_to(ROOT)}:{line}: {cited}"
                      for path, line, text in texts() for cited in citations(text)
                      if not exists(cited, path)})
    assert missing == [], "citations of files that are not in the repository:\n" + "\n".join(missing)


MD_LINK = re.compile(r"\]\(([^)#\s:]+)(?:#[^)]*)?\)")


def test_every_markdown_link_into_the_repository_resolves() -> None:
    """A relative link of a Markdown file (``[x](../drivers/README.md)``) names a file that exists."""
    broken = sorted(f"{path.relative_to(ROOT)}:{line}: {m.group(1)}"
                    for path, line, text in texts() if path.suffix == ".md"
                    for m in MD_LINK.finditer(text)
                    if not (path.parent / m.group(1)).resolve().exists())
    assert broken == [], "links to files that are not in the repository:\n" + "\n".join(broken)


@pytest.mark.parametrize(("text", "found"), [
    ("see ``reference/serial-timing.md`` §2", ["reference/serial-timing.md"]),
    ("(docs/billing-rules.md §5).", ["docs/billing-rules.md"]),
    ("billing-practice.md §3", ["billing-practice.md"]),
    ("https://example.org/docs/x.md and /etc/amr-gateway/config.yaml", []),
    ("drivers/<name>/ and {prefix}/{gateway}/status", []),
])
def test_citations_are_recognised(text: str, found: list[str]) -> None:
    assert list(citations(text)) == found


def test_a_missing_citation_is_caught() -> None:
    assert not exists("reference/serial-timing.md", ROOT / "gateway" / "store.py")
    assert exists("docs/delivery.md", ROOT / "gateway" / "store.py")
    assert exists("README.md", ROOT / "drivers" / "dlt645" / "codec.py")
