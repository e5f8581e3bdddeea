"""The web console in a real browser against a real ``amr-gateway demo`` (issue 19).

Playwright (the ``playwright`` package; its bundled driver only) drives Debian's chromium at
/usr/bin/chromium, which ``scripts/ensure-services.sh`` installs; Playwright's own browser
downloads are never used. A missing browser fails the test (it is not skipped). Every request
the page makes is routed through the test, which fails on any that leaves the gateway's
origin. Screenshots go to the test's temporary directory (and also to
``$AMR_CONSOLE_SCREENSHOTS`` when set: ``AMR_CONSOLE_SCREENSHOTS=docs/img`` refreshes the
README's pictures, from a demo whose store first gets a week of history).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from playwright.sync_api import Browser, Page, Route, ViewportSize, expect, sync_playwright

from gateway.ports import free_port
from tests.consolehistory import seed_demo_history
from tests.servicefixtures import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "console-browser-token"
DOCS_PICTURES = ("overview", "meter")      # the pictures the README shows (the rest stay in the test's dir)


def get(url: str, token: str | None = TOKEN) -> dict[str, object]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        data: dict[str, object] = json.loads(resp.read())
        return data


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def demo(tmp_path: Path, data_dir: Path) -> Iterator[str]:
    """A running ``amr-gateway demo`` (real time, simulated meters) whose meters have all answered.

    When the run refreshes the README's pictures (``$AMR_CONSOLE_SCREENSHOTS``), the demo's
    store first gets the past week of its meters' readings (:mod:`tests.consolehistory`,
    ≈ 10 s), so the meter page shows a day's curve and a week of interval bars."""
    if os.environ.get("AMR_CONSOLE_SCREENSHOTS"):
        data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(seed_demo_history(data_dir, days=7))
    port = free_port()
    env = dict(os.environ, AMR_API_TOKEN=TOKEN, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir), "--mqtt", f"127.0.0.1:{free_port()}", "--duration", "300",
         "--clock-rate", "10"],   # ten simulated seconds a second: a curve with some points in the test's time
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def all_answered() -> bool:
        try:
            meters = get(f"{base}/api/v1/meters")["meters"]
        except OSError:
            return False
        assert isinstance(meters, list)
        return len(meters) >= 6 and all(m["last_good"] for m in meters)

    try:
        wait_until(all_answered, 60, "every demo meter answered once")
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out


def keep(shots: Path, page: Page, name: str, docs: bool = True) -> Path:
    """A full-page screenshot into ``shots`` (and ``$AMR_CONSOLE_SCREENSHOTS`` when set, for the README's pictures)."""
    path = shots / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("AMR_CONSOLE_SCREENSHOTS")
    if target and docs and name in DOCS_PICTURES:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


DESKTOP: ViewportSize = {"width": 1280, "height": 800}


class GatewayOrigin:
    """Pages that may only reach the gateway: any request to another origin is aborted and
    recorded in ``foreign`` (the console must work on a LAN without the internet)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.foreign: list[str] = []

    def route(self, route: Route) -> None:
        """Let the gateway's own requests through; abort and record the rest."""
        url = route.request.url
        if url == self.base or url.startswith(self.base + "/"):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def page(self, browser: Browser, locale: str = "en-US", viewport: ViewportSize = DESKTOP) -> Page:
        """A page in a new browser context, confined to the gateway (close its ``context``)."""
        page = browser.new_context(locale=locale, viewport=viewport).new_page()
        page.route("**/*", self.route)
        page.set_default_timeout(20_000)
        return page


def test_sign_in_overview_meter_curve_and_sign_out(demo: str, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: run scripts/ensure-services.sh (as root) or `apt-get install -y chromium`")
    base = demo
    shots = tmp_path / "screenshots"
    shots.mkdir()
    origin = GatewayOrigin(base)
    api_meters = get(f"{base}/api/v1/meters")["meters"]
    assert isinstance(api_meters, list)
    ids = sorted(str(m["id"]) for m in api_meters)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = origin.page(browser)
            context = page.context

            # sign in (the page follows the browser's language: English here)
            page.goto(base + "/")
            page.wait_for_selector("#signin-page:not([hidden])")
            assert page.locator("#signin-page h2").inner_text() == "Sign in"
            page.fill("#token", "wrong-token")
            page.click("#signin-form button[type=submit]")
            expect(page.locator("#signin-error")).to_have_text("The token is wrong or revoked. Use an API token of "
                                                               "this gateway.")
            page.fill("#token", TOKEN)
            page.click("#signin-form button[type=submit]")
            page.wait_for_selector("#overview-page:not([hidden])")
            cookie = next(c for c in context.cookies() if c["name"] == "amr_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
            assert page.evaluate("document.cookie") == ""          # HttpOnly: no script sees it

            # overview: every demo meter, each with a last good read and a quality, from the API
            expect(page.locator("#meters tbody tr")).to_have_count(len(ids))
            shown = sorted(page.locator("#meters tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.meter)"))
            assert shown == ids
            first = page.locator(f"#meters tbody tr[data-meter='{ids[0]}'] td[data-col=last_good]")
            assert first.inner_text() != "—"
            assert page.locator("#meters tbody td.q-good").count() >= 1
            assert page.locator("#store dd").count() >= 4                 # authenticated health
            # buses: a serial line shows its wire limit (the API's figure), a TCP bus has none
            buses = cast(list[dict[str, Any]], get(f"{base}/api/v1/console/overview")["buses"])
            serial = next(b for b in buses if b["type"] == "serial")
            tcp = next(b for b in buses if b["type"] == "tcp")
            assert serial["wire_limit_per_s"] > 0 and tcp["wire_limit_per_s"] is None and tcp["wire_ratio"] is None
            limit_cell = page.locator(f"#buses tbody tr[data-bus='{serial['id']}'] td").nth(5)
            assert float(limit_cell.inner_text()) == pytest.approx(serial["wire_limit_per_s"], abs=0.051)
            expect(page.locator(f"#buses tbody tr[data-bus='{tcp['id']}'] td").nth(5)).to_have_text("—")
            # live: polling every 5 s brings a newer last good read without a reload
            before = first.inner_text()
            expect(first).not_to_have_text(before, timeout=40_000)
            # sorting and filtering work in the page
            page.click("#meters th[data-sort=id]")                        # second click: descending
            assert page.locator("#meters tbody tr").first.get_attribute("data-meter") == ids[-1]
            page.fill("#filter", ids[0])
            expect(page.locator("#meters tbody tr")).to_have_count(sum(1 for m in ids if ids[0] in m))
            assert ids[0] in str(page.locator("#meters tbody tr").first.get_attribute("data-meter"))
            page.fill("#filter", "")
            # a bus's requests/s, and its share of the wire limit, once two samples are 5 s apart
            cells = page.locator(f"#buses tbody tr[data-bus='{serial['id']}'] td")
            expect(cells.nth(3)).not_to_have_text("—", timeout=20_000)
            assert cells.nth(6).inner_text().endswith("%") and cells.nth(7).inner_text().endswith("%")
            keep(shots, page, "overview")

            # meter page: a meter with power_kw readings draws its curve; the points are the API's
            meter = next(m for m in ids if any(
                "power_kw" in (r.get("points") or {})
                for r in get(f"{base}/api/v1/meters/{m}/readings")["readings"]))  # type: ignore[attr-defined]
            page.click(f"#meters a[href='#/meter/{meter}']")
            page.wait_for_selector("#meter-page:not([hidden])")
            page.wait_for_selector("#curve svg circle.pt")
            page.wait_for_selector("#bars svg rect")
            drawn = page.locator("#curve svg circle.pt").evaluate_all(
                "cs => cs.map(c => [c.dataset.ts, c.dataset.value])")
            api = get(f"{base}/api/v1/meters/{meter}/readings")["readings"]
            assert isinstance(api, list)
            last_drawn = max(ts for ts, _ in drawn)
            expected = [(r["ts"], float(r["points"]["power_kw"]["value"])) for r in api
                        if r["quality"] == "good" and "power_kw" in (r.get("points") or {})
                        and r["points"]["power_kw"]["value"] is not None and r["ts"] <= last_drawn]
            assert len(drawn) >= 2
            assert [(ts, float(v)) for ts, v in drawn] == expected
            assert page.locator("#curve svg polyline.line").count() >= 1
            keep(shots, page, "meter")

            # every text switches to Chinese
            page.select_option("#lang", "zh-CN")
            expect(page.locator("#signout")).to_have_text("退出登录")
            assert page.locator("#meter-page h3").first.inner_text() == "最近 24 小时负荷曲线（kW）"

            # sign out: back to the sign-in form, and the cookie no longer opens the API
            page.click("#signout")
            page.wait_for_selector("#signin-page:not([hidden])")
            assert page.evaluate("fetch('/api/v1/meters').then(r => r.status)") == 401
            assert page.evaluate("fetch('/console/session').then(r => r.status)") == 401
            context.close()
        finally:
            browser.close()
    assert origin.foreign == [], f"the console asked another origin: {origin.foreign}"


# ------------------------------------------------------------------ every page, roles, worklist

EVENT_ID = 1_000_001


def stored_event(data_dir: Path, meter: str, at: float) -> None:
    """A raised ``clock_deviation`` event, stored in the demo's store as the review engine stores
    one (the demo's healthy simulated meters raise none in the minutes a test has)."""
    from gateway.review import db
    from gateway.review.db import StoredEvent

    ev = StoredEvent(id=EVENT_ID, meter=meter, type="clock_deviation", key="clock", state="raised", ts=at,
                     raised_id=None, seq=None, message=f"meter {meter}'s clock is 420 s ahead of the gateway's "
                     "(threshold 300 s)", evidence={"offset_s": 420, "threshold_s": 300})
    conn = sqlite3.connect(data_dir / "amr-gateway.sqlite", timeout=20)
    try:
        with conn:
            db.insert_event(conn, ev)
    finally:
        conn.close()


def make_token(data_dir: Path, role: str) -> str:
    from gateway.tokens import Role, TokenFile

    token, _ = TokenFile(data_dir).add(f"console-{role}", Role.parse(role), "2026-12-01T00:00:00Z")
    return token


def visible_text(page: Page) -> str:
    return str(page.evaluate("document.querySelector('main section:not([hidden])').innerText + "
                             "document.querySelector('header').innerText"))


PAGES = {"overview": "#/", "meter": "#/meter/{meter}", "customer": "#/customer/{customer}",
         "worklist": "#/worklist", "kpi": "#/kpi"}
READY = {"overview": "#meters tbody tr", "meter": "#curve svg", "customer": "#customer-meters tbody tr",
         "worklist": "#worklist article.event", "kpi": "#kpi-cycle-customer tbody tr"}
# words that only the English table has, per page: none may show once the page is in Chinese
ENGLISH = ("Overview", "Meters", "Sign out", "Stage", "Review worklist", "Acknowledge", "Per bus",
           "Registers per tariff", "Last good read", "Customer")


def test_every_page_in_both_languages_roles_and_the_worklist(demo: str, data_dir: Path, tmp_path: Path) -> None:
    """Every page in English and Chinese with no untranslated key, at 1280x800 and on a tablet;
    a reader sees no worklist buttons and the API refuses its acknowledgement (403); an operator
    acknowledges an event with a note and closes it, and the worklist and the audit log show it."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/ensure-services.sh"
    base = demo
    shots = tmp_path / "screenshots"
    shots.mkdir()
    reader, operator = make_token(data_dir, "reader"), make_token(data_dir, "operator")
    meters = get(f"{base}/api/v1/meters")["meters"]
    assert isinstance(meters, list)
    meter = next(m for m in meters if m["billing"] and m["customer"])
    health = get(f"{base}/api/v1/health")
    at = datetime.fromisoformat(str(health["time"]).replace("Z", "+00:00")).timestamp() - 60
    stored_event(data_dir, meter["id"], at)
    origin = GatewayOrigin(base)

    def sign_in(page: Page, token: str) -> None:
        page.goto(base + "/")
        page.wait_for_selector("#signin-page:not([hidden])")
        page.fill("#token", token)
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("#overview-page:not([hidden])")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            sizes: list[tuple[ViewportSize, str]] = [(DESKTOP, ""),
                                                     ({"width": 820, "height": 1180}, "-tablet")]
            for viewport, suffix in sizes:
                for lang in ("en", "zh-CN"):
                    page = origin.page(browser, "en-US" if lang == "en" else "zh-CN", viewport)
                    context = page.context
                    sign_in(page, reader)
                    for name, frag in PAGES.items():
                        page.goto(base + "/" + frag.format(meter=meter["id"], customer=meter["customer"]))
                        page.wait_for_selector(READY[name])
                        page.wait_for_load_state("networkidle")
                        text = visible_text(page)
                        assert page.evaluate("window.amrMissingKeys") == [], (name, lang)
                        if lang == "zh-CN":
                            shown = [w for w in ENGLISH if w in text]
                            assert shown == [], (name, shown)
                        # nothing wider than the window: the page works at this size
                        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                        wide = page.evaluate("[...document.querySelectorAll('main *')].filter(e => e.offsetParent "
                                             "&& e.getBoundingClientRect().right > innerWidth + 1).slice(0, 5)"
                                             ".map(e => e.tagName + '#' + e.id + '.' + e.className + ': ' "
                                             "+ e.textContent.slice(0, 80))")
                        assert overflow <= 1, (name, viewport, overflow, wide)
                        if lang == "en" or name in ("overview", "meter"):
                            keep(shots, page, f"{name}{suffix}" + ("" if lang == "en" else "-zh"), docs=False)
                    context.close()

            # a reader: the worklist shows the event with its evidence and chart, and no buttons
            page = origin.page(browser)
            context = page.context
            sign_in(page, reader)
            page.goto(base + "/#/worklist")
            card = page.locator(f"article.event[data-event='{EVENT_ID}']")
            expect(card).to_have_attribute("data-state", "open")
            expect(card.locator(".evidence dt").first).to_have_text("offset_s")
            card.locator(".chart svg").wait_for()
            assert card.locator("button").count() == 0
            status = page.evaluate(f"""fetch('/api/v1/events/{EVENT_ID}/ack', {{method: 'POST',
                headers: {{'Content-Type': 'application/json', 'X-CSRF-Token': state.csrf}},
                body: JSON.stringify({{note: 'reader tries'}})}}).then(r => r.status)""")
            assert status == 403
            context.close()

            # an operator acknowledges with a note, then closes with a reason
            page = origin.page(browser)
            context = page.context
            sign_in(page, operator)
            page.goto(base + "/#/worklist")
            card = page.locator(f"article.event[data-event='{EVENT_ID}']")
            expect(card).to_have_attribute("data-state", "open")
            card.locator("input.note").fill("clock checked on site")
            card.locator("button.ack").click()
            expect(page.locator("#worklist-status")).to_have_text(f"Event {EVENT_ID} acknowledged.")
            card = page.locator(f"article.event[data-event='{EVENT_ID}']")
            expect(card).to_have_attribute("data-state", "acknowledged")
            expect(card).to_contain_text("clock checked on site")
            expect(card).to_contain_text("console-operator")
            keep(shots, page, "worklist-acknowledged")
            card.locator("input.note").fill("meter clock set by the field team")
            card.locator("button.close").click()
            expect(page.locator("#worklist-status")).to_have_text(f"Event {EVENT_ID} closed.")
            expect(page.locator(f"article.event[data-event='{EVENT_ID}']")).to_have_count(0)
            context.close()
        finally:
            browser.close()
    assert origin.foreign == [], f"the console asked another origin: {origin.foreign}"
    listed = get(f"{base}/api/v1/events?meter={meter['id']}")["events"]
    assert isinstance(listed, list)
    item = next(e for e in listed if e["id"] == EVENT_ID)
    assert item["worklist"]["state"] == "closed" and item["worklist"]["note"] == "clock checked on site"
    audit = [json.loads(line) for line in (data_dir / "audit.jsonl").read_text("utf-8").splitlines()]
    mine = [a for a in audit if a.get("subject") == str(EVENT_ID)]
    assert [a["action"] for a in mine] == ["event.acknowledge", "event.close"], mine
    assert all("console-operator" in a["actor"] for a in mine)


def test_customer_page_shows_the_customers_settlement(demo: str, tmp_path: Path) -> None:
    """The customer page shows the customer settlement of ``GET /api/v1/customers/{id}/settlements``:
    its meters with their roles, a row per stage and one for the cycle with quality and status
    (consumption per tariff where both ends are settled), the cycle, no error; the CSV download
    answers the customer CSV."""
    base = demo
    listed = get(f"{base}/api/v1/customers")["customers"]
    assert isinstance(listed, list)
    customer = next(c for c in listed if c["plan"])
    cid = str(customer["id"])
    doc = get(f"{base}/api/v1/customers/{cid}/settlements")
    stages = doc["stages"]
    assert isinstance(stages, list) and stages
    origin = GatewayOrigin(base)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = origin.page(browser)
            page.goto(base + "/")
            page.fill("#token", TOKEN)
            page.click("#signin-form button[type=submit]")
            page.wait_for_selector("#overview-page:not([hidden])")
            page.goto(f"{base}/#/customer/{cid}")
            page.wait_for_selector("#customer-tariffs tbody tr[data-stage]")
            page.wait_for_load_state("networkidle")
            assert page.locator("#customer-error").inner_text() == ""
            shown_meters = page.locator("#customer-meters tbody tr").evaluate_all("rs => rs.map(r => r.dataset.meter)")
            assert shown_meters == [m["meter"] for m in customer["meters"]]
            assert "main" in page.locator("#customer-meters tbody").inner_text()
            shown_stages = page.locator("#customer-tariffs tbody tr").evaluate_all(
                "rs => [...new Set(rs.map(r => r.dataset.stage))]")
            assert shown_stages == [str(st["stage"]) for st in stages] + ["total"]
            assert page.locator("#customer-info dd").first.inner_text() == doc["cycle"]
            href = page.locator("#customer-csv").get_attribute("href")
            got = page.evaluate(f"fetch({json.dumps(href)}).then(r => r.text().then(b => [r.status, "
                                "r.headers.get('content-type'), b.split('\\n')[0]]))")
            assert got[0] == 200 and "text/csv" in got[1] and "customer" in got[2]
            keep(tmp_path, page, "customer-settlement", docs=False)
        finally:
            browser.close()
    assert origin.foreign == []


def test_the_overview_pages_sorts_and_filters_a_thousand_meters(demo: str) -> None:
    """With 1,000 meters (the overview's answer replaced by one of 1,000 made-up rows, in the
    route's own shape), the table shows 50 a page, pages, sorts on any column and filters."""
    base = demo
    real = get(f"{base}/api/v1/console/overview")
    rows = [{"id": f"m{i:04d}", "customer": f"C{(i - 1) // 4 + 1:04d}", "bus": f"tcp-{(i - 1) // 100:02d}",
             "billing": None, "last_good": "2026-12-06T04:00:00.000Z", "last_quality": "good", "last_error": None,
             "success_rate": round(((i * 7919) % 1000) / 1000, 3), "failures": 0, "answering": True,
             "clock_offset_s": float((i * 37) % 200 - 100)} for i in range(1, 1001)]
    body = json.dumps({**real, "meters": rows})
    top = max(rows, key=lambda r: float(str(r["success_rate"])))["id"]

    def overview(route: Route) -> None:
        if route.request.url.startswith(base + "/api/v1/console/overview"):
            route.fulfill(status=200, content_type="application/json", body=body)
        elif route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 800}).new_page()
            page.route("**/*", overview)
            page.set_default_timeout(20_000)
            page.goto(base + "/")
            page.fill("#token", TOKEN)
            page.click("#signin-form button[type=submit]")
            expect(page.locator("#page")).to_have_text("Page 1 of 20 (1000 meters)")
            expect(page.locator("#meters tbody tr")).to_have_count(50)
            assert page.locator("#meters tbody tr").first.get_attribute("data-meter") == "m0001"
            page.click("#next")
            expect(page.locator("#page")).to_have_text("Page 2 of 20 (1000 meters)")
            assert page.locator("#meters tbody tr").first.get_attribute("data-meter") == "m0051"
            page.click("#meters th[data-sort=success_rate]")
            page.click("#meters th[data-sort=success_rate]")          # descending, from its first page
            expect(page.locator("#page")).to_have_text("Page 1 of 20 (1000 meters)")
            assert page.locator("#meters tbody tr").first.get_attribute("data-meter") == top
            page.fill("#filter", "m09")
            expect(page.locator("#page")).to_have_text("Page 1 of 2 (100 meters)")
            shown = page.locator("#meters tbody tr").evaluate_all("rs => rs.map(r => r.dataset.meter)")
            assert len(shown) == 50 and all(m.startswith("m09") for m in shown)
            page.fill("#filter", "tcp-03")                             # by bus
            expect(page.locator("#page")).to_have_text("Page 1 of 2 (100 meters)")
        finally:
            browser.close()
