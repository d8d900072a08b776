"""Summarise a locust run of load_tests/locustfile.py: jobs per second and job times.

    python load_tests/summary.py PREFIX            # PREFIX as given to locust --csv

Reads PREFIX_stats.csv and prints, per JOB row (end-to-end job time from submission to
downloaded result) and for all jobs together: jobs done, failures, jobs per second over
the run, and the p50/p95/p99 job time; then the failures of every other request. Exit
status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

JOB = "JOB"
PERCENTILES = ("50%", "95%", "99%")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _seconds(milliseconds: str) -> str:
    return "n/a" if milliseconds in ("", "N/A") else f"{float(milliseconds) / 1000:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="the --csv prefix of the locust run")
    args = parser.parse_args(argv)
    rows = _rows(Path(f"{args.prefix}_stats.csv"))
    jobs = [r for r in rows if r["Type"] == JOB]
    if not jobs:
        print("no JOB rows: did the run complete any job?", file=sys.stderr)
        return 1
    print(
        f"{'jobs':<26} {'done':>6} {'failed':>6} {'jobs/s':>7}  "
        + "  ".join(f"{p:>7}" for p in ("p50", "p95", "p99"))
    )
    for row in jobs:
        print(
            f"{row['Name']:<26} {row['Request Count']:>6} {row['Failure Count']:>6}"
            f" {float(row['Requests/s']):>7.2f}  "
            + "  ".join(f"{_seconds(row[p]):>7}" for p in PERCENTILES)
        )
    total_jobs = sum(int(r["Request Count"]) for r in jobs)
    total_rate = sum(float(r["Requests/s"]) for r in jobs)
    failed = sum(int(r["Failure Count"]) for r in jobs)
    print(f"{'all jobs':<26} {total_jobs:>6} {failed:>6} {total_rate:>7.2f}")
    other = [r for r in rows if r["Type"] not in (JOB, "") and int(r["Failure Count"])]
    for row in other:
        print(f"failed: {row['Type']} {row['Name']}: {row['Failure Count']}")
    aggregated = next(r for r in rows if r["Name"] == "Aggregated")
    return 1 if int(aggregated["Failure Count"]) else 0


if __name__ == "__main__":
    sys.exit(main())
