"""Run every benchmark: `python -m tests.bench [NAME ...] [--allow-missing]`.

Each benchmark runs as its own process (`python -m tests.bench.bench_NAME`), starts its own
loopback S3 where it needs one, measures its baselines in the same run and prints one line per
metric. Nothing asserts a timing; the exit status is non-zero only if a benchmark crashed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# In the order they are worth reading: the upload baselines first, then SPEC 11's targets.
BENCHES = ("upload_paths", "small_files", "latency", "large", "queue", "purge", "watcher",
           "soak", "tls")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(BENCHES)}")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip benchmarks whose module is not written yet (development)")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    failed = []
    for name in args.names or BENCHES:
        module = f"tests.bench.bench_{name}"
        if importlib.util.find_spec(module) is None:
            if args.allow_missing:
                print(f"== {name}: not written yet, skipped", flush=True)
                continue
            print(f"== {name}: {module} is missing", flush=True)
            failed.append(name)
            continue
        print(f"== {name}", flush=True)
        started = time.monotonic()
        status = subprocess.call([sys.executable, "-m", module], cwd=REPO, env=env)
        print(f"== {name}: {'ok' if status == 0 else f'exit {status}'} "
              f"in {time.monotonic() - started:.0f} s", flush=True)
        if status:
            failed.append(name)
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
