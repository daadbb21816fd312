"""`python -m pipeline.emulator`: run the emulator standalone; prints its base URL once ready."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from pipeline.emulator import media
from pipeline.emulator.faults import parse_faults
from pipeline.emulator.server import Emulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.emulator",
        description="Runware-compatible emulator for krea:krea@2-large on loopback. Prints "
        "its base URL (http://127.0.0.1:PORT/v1) on one line once it is ready.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--ledger", type=Path, help="JSON-lines file, one line per billed image")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds an inference takes")
    parser.add_argument(
        "--faults", default="", help="fault rates per POST, e.g. http_429=0.1,disconnect=0.02"
    )
    parser.add_argument("--fault-seed", type=int, help="make injected faults reproducible")
    parser.add_argument("--api-key", help="accept only this key (default: any non-empty key)")
    parser.add_argument("--credits", type=float, help="USD balance; 402 once it is spent")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds a stall lasts")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each request to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; exit 0 on a clean stop, 2 on bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not media.is_loopback_host(args.host):
        parser.error(f"--host {args.host}: the emulator only binds loopback addresses")
    try:
        faults = parse_faults(args.faults)
    except ValueError as exc:
        parser.error(f"--faults: {exc}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="emulator %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator = Emulator(
        args.port,
        host=args.host,
        latency_s=args.latency,
        faults=faults,
        ledger=args.ledger,
        api_key=args.api_key,
        credits=args.credits,
        fault_seed=args.fault_seed,
        stall_s=args.stall,
    )
    try:
        url = emulator.start()
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
