"""The web console in a real browser against a real ``amr-gateway demo`` (issue 19).

Playwright (the ``playwright`` package; its bundled driver only) drives Debian's chromium at
/usr/bin/chromium, which ``scripts/ensure-services.sh`` installs; Playwright's own browser
downloads are never used. A missing browser fails the test (it is not skipped). Every request
the page makes is routed through the test, which fails on any that leaves the gateway's
origin. Screenshots go to the test's temporary directory (and also to
``$AMR_CONSOLE_SCREENSHOTS`` when set: ``AMR_CONSOLE_SCREENSHOTS=docs/img`` refreshes the
README's pictures).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect, sync_playwright

from gateway.ports import free_port
from tests.servicefixtures import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "console-browser-token"


def get(url: str, token: str | None = TOKEN) -> dict[str, object]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        data: dict[str, object] = json.loads(resp.read())
        return data


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    """A running ``amr-gateway demo`` (real time, simulated meters) whose meters have all answered."""
    port = free_port()
    env = dict(os.environ, AMR_API_TOKEN=TOKEN, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "data"), "--mqtt", f"127.0.0.1:{free_port()}", "--duration", "300",
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


def keep(shots: Path, page: Page, name: str) -> Path:
    path = shots / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("AMR_CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def test_sign_in_overview_meter_curve_and_sign_out(demo: str, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: run scripts/ensure-services.sh (as root) or `apt-get install -y chromium`")
    base = demo
    shots = tmp_path / "screenshots"
    shots.mkdir()
    foreign: list[str] = []

    def only_the_gateway(route: Route) -> None:
        url = route.request.url
        if url == base or url.startswith(base + "/"):
            route.continue_()
        else:
            foreign.append(url)
            route.abort()

    api_meters = get(f"{base}/api/v1/meters")["meters"]
    assert isinstance(api_meters, list)
    ids = sorted(str(m["id"]) for m in api_meters)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.route("**/*", only_the_gateway)
            page.set_default_timeout(20_000)

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
    assert foreign == [], f"the console asked another origin: {foreign}"
