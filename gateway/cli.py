"""``amr-gateway``: the command line.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid configuration. Errors go
to stderr as one clear sentence, never a bare traceback (``--debug`` shows tracebacks).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.authcli import add_auth_commands, cmd_audit, cmd_token
from gateway.changescli import add_meter_command, cmd_meter
from gateway.cliargs import check_arguments
from gateway.errors import AmrError, ConfigError
from gateway.logsetup import setup_logging
from gateway.profilecheck import add_profile_command, cmd_profile
from gateway.sinkdrop import add_sink_command, cmd_sink_drop

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.settings import Settings

log = logging.getLogger("amr.cli")

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT) ended a command before it finished (128 + 2, as a shell reports it); run,
demo and simulate take SIGINT as their normal stop and exit 0."""


def parse_clock_start(text: str | None) -> float | None:
    """``--clock-start`` as epoch seconds (ISO-8601 with offset; naive means UTC)."""
    if text is None:
        return None
    from gateway.model import parse_iso

    try:
        return parse_iso(text)
    except ValueError:
        raise ConfigError(f"--clock-start must be ISO-8601 such as 2026-11-30T23:50:00+08:00, not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    p = argparse.ArgumentParser(prog="amr-gateway", description="Meter-data gateway for power utilities.")
    p.add_argument("--version", action="version", version=f"amr-gateway {__version__}")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="default: the configuration's logging.level, else info")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway (what systemd starts)")
    run.add_argument("-c", "--config", required=True, type=Path)
    run.add_argument("--clock-start", help="rehearsal: simulated start time, e.g. 2026-11-30T23:50:00+08:00 "
                     "(only when every meter's bus is `simulate: true`)")
    run.add_argument("--clock-rate", type=float, help="rehearsal: simulated seconds per real second, e.g. 600 "
                     "(only when every meter's bus is `simulate: true`)")

    demo = sub.add_parser("demo", help="the whole gateway on built-in simulated meters; no file needed")
    demo.add_argument("--clock-start", help="simulated start time, e.g. 2026-11-30T23:50:00+08:00")
    demo.add_argument("--clock-rate", type=float, default=1.0, help="simulated seconds per real second")
    demo.add_argument("--listen", default="127.0.0.1:8080", help="API address (default 127.0.0.1:8080)")
    demo.add_argument("--data-dir", type=Path, help="keep the demo store here (default: a temporary folder)")
    demo.add_argument("--mqtt", default="127.0.0.1:1883", help="broker to publish to when it answers")
    demo.add_argument("--duration", type=float, help="stop after this many real seconds")

    val = sub.add_parser("validate", help="check a configuration; every error names file and line")
    val.add_argument("-c", "--config", required=True, type=Path)

    read = sub.add_parser("read", help="read one meter once and print a decoded table")
    read.add_argument("-c", "--config", type=Path, help="configuration holding the meter")
    read.add_argument("--meter", help="meter id from the configuration")
    _add_target_args(read)
    read.add_argument("--profile", help="profile name (ad hoc reads)")
    _add_address_args(read)

    scan = sub.add_parser("scan", help="find the meters that answer on a bus (their unit ids or addresses)")
    _add_target_args(scan)
    scan.add_argument("--range", dest="id_range", help="which addresses to probe, in the protocol's syntax "
                      "(unit ids such as 1-247 or 1,5,9; meter addresses as a comma list or a first-last "
                      "range); default: every unit id, or ask the single meter on the line")
    scan.add_argument("--timezone", help="the meters' local time zone, for their clock offset "
                      "(default: this machine's), e.g. Asia/Shanghai")

    sim = sub.add_parser("simulate", help="serve the meters a configuration describes, simulated")
    sim.add_argument("-c", "--config", required=True, type=Path)
    sim.add_argument("--clock-start")
    sim.add_argument("--clock-rate", type=float, default=1.0)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--duration", type=float, help="stop after this many real seconds")
    sim.add_argument("--fault", action="append", default=[], metavar="METER:FAULT[:AMOUNT]",
                     help="switch a meter into a fault (backwards, stop, fast, clock_drift, silent, phase_loss, "
                          "zero_load, reverse, demand_over, low_pf, tariff_mismatch, cover_open, programming, ...)")

    exp = sub.add_parser("export", help="intervals / settlements / events / readings from the local store as CSV")
    exp.add_argument("what", choices=["readings", "intervals", "settlements", "events"])
    exp.add_argument("-c", "--config", required=True, type=Path)
    exp.add_argument("--meter", help="one meter (default: all)")
    exp.add_argument("--from", dest="start", help="start, ISO-8601 (default: 24 h before --to)")
    exp.add_argument("--to", dest="end", help="end, ISO-8601 (default: now)")
    exp.add_argument("--step", help="intervals: the step, 15m (default), 30m, 1h or 1d")
    exp.add_argument("--cycle", help="billing cycle YYYY-MM (settlements)")
    exp.add_argument("--table", choices=["settlements", "stages", "customers"],
                     help="settlements only. settlements: every settlement revision (default); stages: stage "
                          "consumption per stage with both ends' qualities and the reconciliation flag; "
                          "customers: every customer's settlement (as GET /api/v1/settlements)")
    exp.add_argument("--format", choices=["csv", "json"], default="csv",
                     help="readings only: csv (default) or json (the API's readings document, one line per meter)")
    exp.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    add_sink_command(sub)
    add_auth_commands(sub)
    add_meter_command(sub)
    add_profile_command(sub)
    return p


def _add_address_args(p: argparse.ArgumentParser) -> None:
    """One option per installed protocol's meter address (``--unit``, ``--address``)."""
    from drivers import registry

    hints: dict[str, list[str]] = {}
    for d in registry.descriptors():
        hints.setdefault(d.address_option, []).append(d.address_hint)
    for option, texts in hints.items():
        p.add_argument(f"--{option}", help=f"{' or '.join(texts)} (ad hoc reads)")


def _add_target_args(p: argparse.ArgumentParser) -> None:
    from drivers import registry

    choices = list(dict.fromkeys((*registry.families(), *registry.protocol_names())))
    bauds = ", ".join(f"{v.default_baudrate} {v.name}" for d in registry.descriptors()
                      for v in d.variants if "serial" in v.transports)
    p.add_argument("--tcp", help="HOST:PORT of a TCP meter or serial server")
    p.add_argument("--serial", help="serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=int, help=f"baud rate (default: {bauds})")
    p.add_argument("--parity", choices=["N", "E", "O"], help="parity (default E)")
    p.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    p.add_argument("--protocol", choices=choices,
                   help=f"a protocol, or a family for its first protocol on the bus type (default "
                        f"{registry.families()[0]})")
    p.add_argument("--timeout", type=float, default=1.0, help="reply timeout in seconds")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amr-gateway`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run, "demo": cmd_demo, "validate": cmd_validate, "read": cmd_read,
        "scan": cmd_scan, "simulate": cmd_simulate, "export": cmd_export, "sink": cmd_sink_drop,
        "token": cmd_token, "audit": cmd_audit, "profile": cmd_profile, "meter": cmd_meter,
    }
    try:
        check_arguments(parser, args)
        return commands[args.command](args)
    except ConfigError as exc:
        for issue in exc.issues:
            # an issue not placed in a file (a bad --cycle, --from, ...) is printed without
            # the "<config>:" placeholder, which names no file
            print(f"error: {issue.message if (issue.file, issue.line) == ('<config>', None) else issue}",
                  file=sys.stderr)
        return EXIT_USAGE
    except AmrError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return quiet_broken_pipe()
    except OSError as exc:
        if args.debug:
            raise
        if exc.errno == errno.EADDRINUSE:
            print(f"error: cannot listen ({exc.strerror}): another program holds that port; stop it or "
                  "choose another port", file=sys.stderr)
            return EXIT_RUNTIME
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def quiet_broken_pipe() -> int:
    """The reader of stdout went away (``| head``): exit quietly, as a shell tool does.

    stdout is pointed at /dev/null so the interpreter's final flush does not fail again.
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_OK


# ---------------------------------------------------------------------------- validate
def cmd_validate(args: argparse.Namespace) -> int:
    """Check a configuration file."""
    from gateway.config import validate_command

    return validate_command(args.config)


# ---------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM/SIGINT; SIGHUP reloads the configuration.

    With ``--clock-start``/``--clock-rate`` (a billing rehearsal) every meter must be
    simulated (its bus ``simulate: true``): otherwise the run is refused, naming the real
    meters, and so is a reload that brings one in (gateway/simulated.py).
    """
    from gateway.config_isolated import load_settings_isolated
    from gateway.logsetup import apply_levels, levels_applied
    from gateway.simulated import refuse_real_meters

    settings = load_settings_isolated(args.config)
    loader = levels_applied(load_settings_isolated, args.log_level)
    clock: Clock | None = None
    if args.clock_start is not None or args.clock_rate is not None:
        from gateway.clock import ScaledClock

        refuse_real_meters(settings)
        clock = ScaledClock(parse_clock_start(args.clock_start), args.clock_rate or 1.0)
        log.info("rehearsal: the clock starts at %s and runs %gx real time; every meter is simulated",
                 clock.now().isoformat(timespec="seconds"), clock.rate)
        plain = loader

        def loader(path: Path) -> Settings:
            new = plain(path)
            refuse_real_meters(new)
            return new
    apply_levels(settings.logging, args.log_level)
    # the first line of a run (the "started" line comes once it polls and serves: ready)
    log.info("amr-gateway %s starting: configuration %s, pid %d", __version__, args.config, os.getpid())
    return _run_async(_serve(settings, args.config, loader, clock))


async def _serve(settings: Settings, path: Path | None, loader: Callable[[Path], Settings] | None,
                 clock: Clock | None = None) -> int:
    from gateway import systemd
    from gateway.runtime import Gateway, reload
    from gateway.simulated import SimulatedBuses

    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_reason: list[str] = []

    def stop_on(signame: str) -> None:
        stop_reason.append(signame)
        stop.set()

    # Before the start: a SIGTERM or SIGHUP that comes while the gateway starts (its "started"
    # line already written, say) is acted on once it runs, instead of killing the process.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_on, sig.name)
    if path is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    gw = Gateway(settings, clock)
    simulators = SimulatedBuses(gw.clock)
    await simulators.serve(settings)       # before the first poll, so simulated meters answer it
    try:
        await gw.start()
    except BaseException:
        await simulators.stop()
        raise
    systemd.notify("READY=1")
    watchdog = asyncio.create_task(systemd.watchdog_loop(), name="watchdog")
    try:
        while not stop.is_set():
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload_requested.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if reload_requested.is_set() and not stop.is_set():
                reload_requested.clear()
                assert path is not None and loader is not None
                try:
                    new = loader(path)
                except ConfigError as exc:
                    log.error("reload refused, the running configuration stays:\n%s", exc)
                    gw.reload_status.failed(gw.clock.time(), f"reload refused, the configuration is invalid: {exc}")
                    continue
                systemd.notify("RELOADING=1")
                gw = await reload(gw, new)     # on any failure the running one is returned, still running
                try:                                  # restarted only when the simulated buses changed
                    await simulators.serve(gw.settings)
                except (AmrError, OSError) as exc:
                    log.error("the simulated buses could not be served after the reload: %s; their meters do "
                              "not answer until a reload fixes it", exc)
                systemd.notify("READY=1")
    finally:
        systemd.notify("STOPPING=1")
        log.info("stopping: %s", stop_reason[0] if stop_reason else "the main loop ended")
        watchdog.cancel()
        await gw.stop()
        await simulators.stop()
        log.info("stopped")
    return EXIT_OK


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Simulated meters + the whole gateway + API, on embedded defaults."""
    from gateway.demo import run_demo

    start = parse_clock_start(args.clock_start)
    if args.clock_rate <= 0:
        raise ConfigError("--clock-rate must be positive, e.g. 60")
    host, _, port = args.listen.rpartition(":")
    mqtt_host, _, mqtt_port = args.mqtt.rpartition(":")
    return _run_async(run_demo(
        clock_start=start, clock_rate=args.clock_rate, api_host=host or "127.0.0.1", api_port=int(port),
        data_dir=args.data_dir, mqtt=(mqtt_host or "127.0.0.1", int(mqtt_port or 1883)),
        duration=args.duration,
    ))


# ---------------------------------------------------------------------------- simulate
def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve simulated meters for every bus of a configuration."""
    from gateway.config import load_settings
    from gateway.simulator.fleet import run_simulator

    settings = load_settings(args.config)
    return _run_async(run_simulator(settings, seed=args.seed, clock_start=parse_clock_start(args.clock_start),
                                    clock_rate=args.clock_rate, duration=args.duration, faults=args.fault))


# ---------------------------------------------------------------------------- read / scan
def cmd_read(args: argparse.Namespace) -> int:
    """Read one meter once and print a table."""
    from gateway.oneshot import read_once

    return _run_async(read_once(args))


def cmd_scan(args: argparse.Namespace) -> int:
    """Scan a bus for answering unit ids / addresses."""
    from gateway.oneshot import scan_bus

    return _run_async(scan_bus(args))


# ---------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    """Write CSV from the local store without a running gateway."""
    from gateway.export import export_csv

    return _run_async(export_csv(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
