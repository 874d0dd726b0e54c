#!/usr/bin/env python3
"""A toy Monte Carlo payload: estimate pi by throwing darts at the unit square.

Usage: mc.py SEED EVENTS [--seconds-per-event F]

Each event throws 200 darts. Progress ("k/N events") goes to $CLOUDPILOT_PROGRESS_FILE when the pilot sets it;
the result goes to result-<SEED>.json. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

DARTS_PER_EVENT = 200


def write_progress(path: str | None, done: int, total: int) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{done}/{total} events\n")
        os.replace(tmp, path)  # the pilot never reads a half-written line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int)
    parser.add_argument("events", type=int)
    parser.add_argument("--seconds-per-event", type=float, default=0.0002, help="extra sleep per event")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    progress_file = os.environ.get("CLOUDPILOT_PROGRESS_FILE")
    started = time.monotonic()
    inside = 0
    every = max(1, args.events // 20)
    for event in range(1, args.events + 1):
        for _ in range(DARTS_PER_EVENT):
            x, y = rng.random(), rng.random()
            inside += x * x + y * y <= 1.0
        if args.seconds_per_event > 0:
            time.sleep(args.seconds_per_event)
        if event % every == 0 or event == args.events:
            write_progress(progress_file, event, args.events)

    darts = args.events * DARTS_PER_EVENT
    estimate = 4.0 * inside / darts if darts else float("nan")
    result = {
        "seed": args.seed,
        "events": args.events,
        "darts": darts,
        "pi_estimate": estimate,
        "error": abs(estimate - math.pi) if darts else None,
        "seconds": round(time.monotonic() - started, 3),
    }
    with open(f"result-{args.seed}.json", "w") as f:
        json.dump(result, f, indent=2)
    print(f"seed {args.seed}: pi ~ {estimate:.5f} from {darts} darts in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
