"""The console's two string tables hold the same keys, and every key the pages use exists."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from importlib import resources
from pathlib import Path

from gateway.web.console import load_strings, static_files
from gateway.web.sessions import SessionStore, csrf_matches


def _static_text(name: str) -> str:
    return resources.files("gateway.web").joinpath("static", name).read_text("utf-8")


def test_both_languages_have_the_same_keys_and_no_empty_text() -> None:
    en, zh = load_strings("en"), load_strings("zh-CN")
    assert set(en) == set(zh), sorted(set(en) ^ set(zh))
    assert len(en) > 40
    assert all(v.strip() for v in [*en.values(), *zh.values()])
    # the Chinese table is Chinese (not a copy of the English one) where the text is words
    assert sum(1 for k in en if en[k] != zh[k]) >= len(en) - 2
    # placeholders match between the languages
    for k in en:
        assert set(re.findall(r"\{\w+\}", en[k])) == set(re.findall(r"\{\w+\}", zh[k])), k


def test_every_key_the_page_and_script_use_is_in_the_tables() -> None:
    keys = set(load_strings("en"))
    html = _static_text("index.html")
    js = _static_text("console.js")
    used = set(re.findall(r'data-i18n(?:-placeholder)?="([^"]+)"', html))
    used |= set(re.findall(r'\bt\("([a-z_.]*[a-z_])"', js))   # t("role." + role): checked below
    assert len(used) > 30
    assert used <= keys, sorted(used - keys)
    # keys built at run time: roles, qualities, store pressure
    for prefix, values in (("role.", ("reader", "operator", "admin")),
                           ("quality.", ("good", "timeout", "crc_error", "exception", "invalid")),
                           ("pressure.", ("ok", "near_cap", "full"))):
        assert {prefix + v for v in values} <= keys


def test_the_page_loads_nothing_from_another_origin() -> None:
    files = static_files()
    assert {"index.html", "console.js", "console.css", "strings-en.json", "strings-zh-CN.json"} <= set(files)
    for name in ("index.html", "console.js", "console.css"):
        text = _static_text(name)
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), name
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), name
        assert "https://" not in text, name


def test_sessions_are_random_bounded_expiring_and_end_on_sign_out() -> None:
    now = [1000.0]
    store = SessionStore(now=lambda: now[0], ttl_s=60.0, max_sessions=2)
    a = store.create("tok-a", "admin")
    b = store.create("tok-b", "admin")
    assert a.id != b.id and a.csrf != b.csrf and len(a.id) >= 40
    assert store.get(a.id) is a
    c = store.create("tok-c", "admin")          # a third pushes out the oldest
    assert store.get(a.id) is None and store.get(c.id) is c and len(store) == 2
    assert csrf_matches(c, c.csrf) and not csrf_matches(c, b.csrf) and not csrf_matches(c, None)
    assert not csrf_matches(c, "\udcff")
    assert store.end(b.id) and store.get(b.id) is None and not store.end(b.id)
    now[0] += 61.0
    assert store.get(c.id) is None                # expired
    assert store.get(None) is None and store.get("") is None


def test_every_console_file_is_in_the_wheels_package_data() -> None:
    """pyproject's package-data covers every console file, so the wheel carries them (a wheel built
    with `pip wheel .` held all of them); a new file there must not be left out."""
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["package-data"]["gateway"]
    names = [f"web/static/{p.name}" for p in (root / "gateway" / "web" / "static").iterdir() if p.is_file()]
    assert len(names) >= 5
    for name in names:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
    assert set(static_files()) == {n.rsplit("/", 1)[-1] for n in names}   # and the console serves them all
