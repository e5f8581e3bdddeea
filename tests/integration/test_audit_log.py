"""The hash-chained audit log: appends chain and survive verify; ``amr-gateway audit verify``
(a real process) exits 0 on an intact log and 1 naming the first broken entry after a byte is
changed, an entry is deleted, or entries are reordered. Real files on disk throughout."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.audit import AUDIT_FILE, GENESIS, AuditError, AuditLog, verify

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def audit_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)


def write_log(data_dir: Path, n: int) -> list[bytes]:
    log = AuditLog.in_dir(data_dir)
    for i in range(1, n + 1):
        log.append("token:0123abcd (ops)", "meter.ratio_change", f"m{i}", {"ct": Decimal("100.5")},
                   {"ct": Decimal(f"{200 + i}.25"), "note": "换表 after\nstorm"}, now=1_800_000_000.0 + i)
    return (data_dir / AUDIT_FILE).read_bytes().splitlines(keepends=True)


def test_appends_chain_from_genesis_exactly_and_are_private(tmp_path: Path) -> None:
    lines = write_log(tmp_path, 3)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    assert [e["prev"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]
    assert '"ct":203.25' in lines[2].decode()               # Decimals stay exact numbers
    assert entries[0]["after"]["note"] == "换表 after\nstorm"   # one line per entry, whatever the text
    assert stat.S_IMODE((tmp_path / AUDIT_FILE).stat().st_mode) == 0o600
    verdict = verify(tmp_path / AUDIT_FILE)
    assert (verdict.intact, verdict.entries, verdict.head) == (True, 3, entries[2]["hash"])
    assert verify(tmp_path / "absent.jsonl").intact            # no log yet: nothing to break


def test_verify_cli_names_the_changed_deleted_or_reordered_entry(tmp_path: Path) -> None:
    lines = write_log(tmp_path, 5)
    path = tmp_path / AUDIT_FILE
    ok = audit_verify(tmp_path)
    assert ok.returncode == 0 and "5 entries, chain intact" in ok.stdout, ok.stderr

    changed = bytearray(b"".join(lines))
    at = changed.index(b"203.25")                              # entry 3's after.ct: 203.25 -> 208.25
    changed[at + 2] = ord("8")
    path.write_bytes(bytes(changed))
    bad = audit_verify(tmp_path)
    assert bad.returncode == 1
    assert "line 3 (entry 3) is broken" in bad.stderr and "changed" in bad.stderr, bad.stderr

    path.write_bytes(b"".join(lines[:2] + lines[3:]))           # entry 3 deleted
    bad = audit_verify(tmp_path)
    assert bad.returncode == 1
    assert "line 3 (entry 3) is broken" in bad.stderr and "entry 3 is missing" in bad.stderr, bad.stderr

    path.write_bytes(b"".join([lines[0], lines[2], lines[1], *lines[3:]]))   # entries 2 and 3 swapped
    bad = audit_verify(tmp_path)
    assert bad.returncode == 1 and "line 2 (entry 2) is broken" in bad.stderr, bad.stderr

    path.write_bytes(b"".join([lines[0], lines[1], lines[1], *lines[2:]]))   # entry 2 repeated
    bad = audit_verify(tmp_path)
    assert bad.returncode == 1
    assert "line 3 (entry 3) is broken" in bad.stderr and "reordered or repeated" in bad.stderr, bad.stderr

    path.write_bytes(b"".join(lines[1:]))                        # the first entry deleted
    bad = audit_verify(tmp_path)
    assert bad.returncode == 1 and "line 1 (entry 1) is broken" in bad.stderr, bad.stderr


def test_any_changed_byte_is_found_in_its_own_line(tmp_path: Path) -> None:
    lines = write_log(tmp_path, 3)
    data = b"".join(lines)
    path = tmp_path / AUDIT_FILE
    line_of = [n for n, line in enumerate(lines, start=1) for _ in line]
    for offset in range(len(data)):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        path.write_bytes(bytes(flipped))
        verdict = verify(path)
        assert verdict.broken_line == line_of[offset], (offset, bytes(flipped[offset - 5:offset + 5]), verdict)


def test_append_refuses_to_chain_onto_a_cut_off_entry(tmp_path: Path) -> None:
    lines = write_log(tmp_path, 2)
    (tmp_path / AUDIT_FILE).write_bytes(lines[0] + lines[1][:40])   # a write cut off by a crash
    with pytest.raises(AuditError, match="incomplete entry"):
        AuditLog.in_dir(tmp_path).append("cli:ops", "token.add", "x", None, None)
    verdict = verify(tmp_path / AUDIT_FILE)
    assert verdict.broken_line == 2 and verdict.reason is not None and "line end" in verdict.reason


def test_processes_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    """Two real processes (CLI, a running gateway) may append at the same time: the lock keeps one chain."""
    script = ("import sys; from pathlib import Path; from gateway.audit import AuditLog\n"
              "log = AuditLog.in_dir(Path(sys.argv[1]))\n"
              "for i in range(40): log.append(sys.argv[2], 'token.add', str(i), None, {'i': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), who], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO))) for who in ("cli:a", "cli:b", "cli:c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    verdict = verify(tmp_path / AUDIT_FILE)
    assert verdict.intact and verdict.entries == 120, verdict
    entries = [json.loads(line) for line in (tmp_path / AUDIT_FILE).read_text().splitlines()]
    assert sorted((e["actor"], e["after"]["i"]) for e in entries) == sorted(
        (who, i) for who in ("cli:a", "cli:b", "cli:c") for i in range(40))
