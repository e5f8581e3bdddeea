"""``amr-gateway demo`` without AMR_API_TOKEN: the token in its banner works, it lives hashed in
the demo's token file, and it is printed on stdout only (never in the log)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.demo import free_port
from gateway.tokens import TOKEN_FILE, TokenFile
from tests.e2e.test_demo import get

REPO = Path(__file__).resolve().parents[2]


def test_demo_banner_token_is_an_admin_token_of_its_data_dir(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "AMR_API_TOKEN"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path),
         "--mqtt", f"127.0.0.1:{free_port()}", "--duration", "60"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    token = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not token:
            line = proc.stdout.readline()
            if not line:
                break
            if line.strip().startswith("API token"):
                token = line.split(":", 1)[1].strip()
        assert token.startswith("amr_"), "the banner must show the API token"
        meters = get(f"http://127.0.0.1:{port}/api/v1/meters", token)["meters"]
        assert isinstance(meters, list) and len(meters) >= 6
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert token not in err and token.split("_", 2)[2] not in err          # the log never shows it
    (record,) = TokenFile(tmp_path).records()
    assert (record.name, record.role, record.id) == ("demo", "admin", token[4:12])
    assert token.split("_", 2)[2] not in (tmp_path / TOKEN_FILE).read_text()
