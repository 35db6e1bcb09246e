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
    parser.add_argument("--webhook-concurrency", type=int, default=50)
    parser.add_argument("--webhook-rounds", type=int, default=10)
    parser.add_argument("--log-lines", type=int, default=200_000, help="Lines the log benchmark's step prints.")
    parser.add_argument("--log-viewers", type=int, default=20, help="WebSocket viewers of the log benchmark.")
    parser.add_argument("--artifact-mb", type=int, default=1024, help="Size of the artifact transfer benchmark.")
    parser.add_argument("--quick", action="store_true", help="Small sizes, for a smoke run.")
    args = parser.parse_args()
    if args.quick:
        args.artifact_mb = 64
        args.log_lines, args.log_viewers = 20_000, 5
        args.jobs, args.dispatch_samples, args.webhook_rounds = 2000, 50, 2

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
    from bench import peers

    peer = peers.procrastinate_throughput(jobs=args.jobs, concurrency=args.concurrency)
    rows.append({"queue": "procrastinate (peer)", **peer})
    ours = rows[0]["claims_per_s"]
    rows[0]["vs_raw"] = f"{ours / rows[1]['claims_per_s']:.2f}x"
    rows[0]["vs_peer"] = f"{ours / max(1, rows[2]['claims_per_s']):.2f}x"
    columns = ["queue", "jobs", "claimed", "double_claims", "claims_per_s", "p50_ms", "p99_ms", "vs_raw", "vs_peer"]
    print_table(rows, columns)
    results["claim_throughput"] = rows

    print(f"\ndispatch latency (queued -> claimed, idle runner on LISTEN/NOTIFY), {args.dispatch_samples} samples\n")
    dispatch = claims.dispatch_latency(samples=args.dispatch_samples)
    print_table([dispatch], ["samples", "lost", "p50_ms", "p99_ms", "mean_ms"])
    results["dispatch_latency"] = dispatch

    from bench import webhooks

    print(f"\nwebhook endpoint (uvicorn, one process), bursts of {args.webhook_concurrency} signed deliveries\n")
    hooks = webhooks.webhook_latency(concurrency=args.webhook_concurrency, rounds=args.webhook_rounds)
    print_table([hooks], ["deliveries", "concurrency", "statuses", "stored", "per_s", "p50_ms", "p99_ms", "mean_ms"])
    results["webhook_latency"] = hooks

    from bench import logs

    print(f"\nlive logs: {args.log_lines} lines printed by a step, {args.log_viewers} WebSocket viewers\n")
    log_rows = [
        logs.ingest_with_viewers(lines=args.log_lines, viewers=0),
        logs.ingest_with_viewers(lines=args.log_lines, viewers=args.log_viewers),
        logs.ingest_with_viewers(lines=args.log_lines, viewers=args.log_viewers, deflate=False),
        logs.ingest_service_only(lines=args.log_lines),
    ]
    print_table(log_rows, logs.COLUMNS)
    results["live_logs"] = log_rows

    from bench import artifacts

    print(f"\nartifacts: one {args.artifact_mb} MiB artifact up and down through uvicorn (HTTP runner side)\n")
    artifact_rows = [artifacts.transfer(size_mb=args.artifact_mb, store=store) for store in ("filesystem", "s3")]
    print_table(artifact_rows, artifacts.COLUMNS)
    results["artifacts"] = artifact_rows

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
