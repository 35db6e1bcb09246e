"""`make bench`: run the benchmarks side by side, print a table, write JSON to bench/results/."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from bench.common import ensure_database, print_table, setup_django


def main() -> None:
    parser = argparse.ArgumentParser(description="Conveyor benchmarks")
    parser.add_argument("--jobs", type=int, default=20000, help="Queued no-op jobs for the claim benchmark.")
    parser.add_argument("--concurrency", type=int, default=8, help="Concurrent claimers.")
    parser.add_argument("--dispatch-samples", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="Small sizes, for a smoke run.")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.dispatch_samples = 2000, 50

    setup_django()
    ensure_database()
    from bench import claims

    results: dict[str, object] = {"machine": platform.platform(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"claim throughput: {args.jobs} no-op jobs, {args.concurrency} concurrent processes\n")
    rows = []
    for name, target in (
        ("conveyor claim service", claims._orm_claimer),
        ("raw SQL (database limit)", claims._raw_claimer),
    ):
        row = {"queue": name, **claims.claim_throughput(jobs=args.jobs, concurrency=args.concurrency, target=target)}
        rows.append(row)
    rows[0]["vs_raw"] = f"{rows[0]['claims_per_s'] / rows[1]['claims_per_s']:.2f}x"
    print_table(rows, ["queue", "jobs", "claimed", "double_claims", "claims_per_s", "p50_ms", "p99_ms", "vs_raw"])
    results["claim_throughput"] = rows

    print(f"\ndispatch latency (queued -> claimed, idle runner on LISTEN/NOTIFY), {args.dispatch_samples} samples\n")
    dispatch = claims.dispatch_latency(samples=args.dispatch_samples)
    print_table([dispatch], ["samples", "lost", "p50_ms", "p99_ms", "mean_ms"])
    results["dispatch_latency"] = dispatch

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
