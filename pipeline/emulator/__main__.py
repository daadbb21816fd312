"""`python -m pipeline.emulator`: run the emulator standalone; prints its base URL once ready."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from pipeline.emulator import media
from pipeline.emulator.faults import parse_faults
from pipeline.emulator.server import Emulator
from pipeline.settings import CREDITS_STATUS, REPEATED_TASK, UNKNOWN_TASK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.emulator",
        description="Runware-compatible emulator for krea:krea@2-large and the other models of "
        "pipeline/models, on loopback. Prints "
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
    parser.add_argument(
        "--latency-sigma",
        type=float,
        default=0.0,
        help="lognormal spread of the latency (--latency stays the median); 0: fixed",
    )
    parser.add_argument(
        "--unknown-task",
        choices=UNKNOWN_TASK,
        default="taskFailedOrNotFound",
        help='what getResponse answers for a taskUUID never accepted ({"data": []} or a 400 code)',
    )
    parser.add_argument(
        "--queued-polls",
        type=int,
        default=0,
        help='accepted async tasks answer {"data": []} to their first N polls',
    )
    parser.add_argument(
        "--repeated-task",
        choices=REPEATED_TASK,
        default="conflict",
        help="a repeated taskUUID: conflictTaskUUID, a replay of the first result, or billed again",
    )
    parser.add_argument(
        "--sync-pollable",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a finished sync task answers getResponse (default: it answers nothing)",
    )
    parser.add_argument(
        "--task-details",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="support Runware's getTaskDetails task",
    )
    parser.add_argument(
        "--credits-status",
        type=int,
        choices=CREDITS_STATUS,
        default=402,
        help="HTTP status of insufficientCredits (docs: 402; seen live: 400)",
    )
    parser.add_argument(
        "--price-factor",
        type=float,
        default=1.0,
        help="bill this many times the packaged price table (a live price that differs)",
    )
    parser.add_argument("--stats-out", type=Path, help="write the request counters here on exit")
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
    if args.latency < 0 or args.latency_sigma < 0 or args.queued_polls < 0:
        parser.error("--latency, --latency-sigma and --queued-polls must be ≥ 0")
    if not args.price_factor > 0:
        parser.error("--price-factor must be > 0")
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
        latency_sigma=args.latency_sigma,
        unknown_task=args.unknown_task,
        queued_polls=args.queued_polls,
        repeated_task=args.repeated_task,
        sync_pollable=args.sync_pollable,
        task_details=args.task_details,
        credits_status=args.credits_status,
        price_factor=args.price_factor,
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
        if args.stats_out is not None:
            args.stats_out.write_text(json.dumps(emulator.stats(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
