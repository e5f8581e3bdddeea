"""Memory a gateway keeps from parsing its configuration: in-process vs. in a child.

``python -m bench.config_memory [--meters 10000]`` writes case b's configuration (the one
``bench/tcp_fleet.py`` runs: one TCP bus per meter, 128 schedules, both sinks) and loads it
in two fresh processes: with :func:`gateway.config.load_settings` (the parse in-process)
and with :func:`gateway.config_isolated.load_settings_isolated` (the parse in a spawn
child). Prints each process's RSS after the load and its peak. Not a test; no target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.tcp_fleet import write_config

PROBE = """
import re, sys, time
from pathlib import Path
from {module} import {function} as load
t = time.monotonic()
settings = load(Path(sys.argv[1]))
status = open("/proc/self/status").read()
rss, hwm = (int(re.search(k + r":\\s+(\\d+)", status).group(1)) / 1024 for k in ("VmRSS", "VmHWM"))
print(f"{{len(settings.meters):,}} meters in {{time.monotonic() - t:.1f}} s: RSS {{rss:.0f}} MB, peak {{hwm:.0f}} MB")
"""


def main() -> int:
    """Write the configuration, load it both ways, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="amr-bench-config-") as tmp:
        path = Path(tmp) / "gw.yaml"
        write_config(path, gateway_id="bench-config", data_dir=Path(tmp) / "data", meters=args.meters,
                     interval=10.0, phases=128, port_base=10000, units=2, api_port=18080, sinks=True,
                     commit_ms=None, synchronous=None)
        print(f"{path.stat().st_size / 1e6:.1f} MB of YAML, {args.meters:,} meters")
        for label, module, function in (("in-process", "gateway.config", "load_settings"),
                                        ("spawn child", "gateway.config_isolated", "load_settings_isolated")):
            code = PROBE.format(module=module, function=function)
            out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                 timeout=600, check=True)
            print(f"{label:12}: {out.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
