"""The README's main job as one command: clip -> .nvp -> cls + det routes -> a multi-task query -> PNG -> quick bench.

python bench/demo.py [--out demo] [--fit-seconds 60] [--no-bench]
"""

import argparse
from pathlib import Path

from nvp_export.demo import DemoConfig, run_demo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DemoConfig.out)
    p.add_argument("--fit-seconds", type=float, default=DemoConfig.fit_seconds, help="INR fitting time budget")
    p.add_argument("--threads", type=int, default=DemoConfig.threads)
    p.add_argument("--no-bench", action="store_true", help="skip the quick benchmark table")
    args = p.parse_args()
    run_demo(DemoConfig(out=args.out, fit_seconds=args.fit_seconds, threads=args.threads, bench=not args.no_bench))


if __name__ == "__main__":
    main()
