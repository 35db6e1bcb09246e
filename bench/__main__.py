"""`make bench` / `make bench-quick`: run the benchmarks side by side, print tables, write JSON.

The JSON (bench/results/latest.json, and a dated copy beside it) is nested by benchmark:
`{"claim": {"claims_per_s": ...}, "e2e": {...}, ...}`; `claim.claims_per_s` in the issue and
in bench/README.md names `results["claim"]["claims_per_s"]`. Every figure is measured in
this run; the machine and the date say where and when.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import ensure_database, print_table, setup_django

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("claim", "idle", "webhook", "logs", "artifacts", "gitcache", "e2e", "growth")
# (key, target as text, check) for the summary table: the targets on a 2-core machine.
TARGETS = [
    ("claim.claims_per_s", "", None),
    ("claim.ratio_vs_raw", ">= 0.5", lambda v: v >= 0.5),
    ("claim.ratio_vs_procrastinate", ">= 2", lambda v: v >= 2),
    ("claim.double_claims", "0", lambda v: v == 0),
    ("idle.claims_per_job", "", None),
    ("idle.claims_per_job_ratio", "flat (<= 1.5)", lambda v: v <= 1.5),
    ("idle.unclaimed", "0", lambda v: v == 0),
    ("e2e.runs_per_hour", "", None),
    ("e2e.overhead_ms_p50", "<= 30", lambda v: v <= 30),
    ("e2e.scheduling_ms_p50", "<= 20", lambda v: v <= 20),
    ("e2e.scheduling_ms_p99", "<= 100", lambda v: v <= 100),
    ("e2e.dispatch_ms_p50", "<= 20", lambda v: v <= 20),
    ("webhook.p99_ms", "<= 50", lambda v: v <= 50),
    ("logs.ingest_mb_s", "", None),
    ("logs.latency_ms_p99", "", None),
    ("logs.bytes_mismatched", "0", lambda v: v == 0),
    ("artifacts.upload_mb_s", "", None),
    ("artifacts.peak_rss_mb", "", None),
    ("gitcache.kb_added_p50", "", None),
    ("gitcache.snapshot_kb_added_p50", "", None),
    ("growth.claim_cost_ratio_100x", "flat (<= 1.5)", lambda v: v <= 1.5),
]


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    """--quick: the same benchmarks at about a tenth of the sizes (`make bench-quick`, < 3 minutes)."""
    full = {
        "jobs": 20_000,
        "dispatch_samples": 200,
        "idle_waiting": 200,
        "idle_jobs": 10,
        "webhook_rounds": 10,
        "log_lines": 200_000,
        "log_viewers": 20,
        "artifact_mb": 1024,
        "git_files": 2000,
        "git_commits": 20,
        "e2e_runs": 200,
        "e2e_latency_runs": 20,
        "growth_queued": 20_000,
    }
    quick = {
        "jobs": 2_000,
        "dispatch_samples": 50,
        "idle_waiting": 50,
        "idle_jobs": 5,
        "webhook_rounds": 2,
        "log_lines": 20_000,
        "log_viewers": 5,
        "artifact_mb": 100,
        "git_files": 500,
        "git_commits": 6,
        "e2e_runs": 20,
        "e2e_latency_runs": 5,
        "growth_queued": 1_000,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return {name: getattr(args, name) for name in full}


def machine() -> dict[str, object]:
    import redis
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    url = settings.REDIS_URL
    if url.startswith("unix://"):
        client = redis.Redis(unix_socket_path=url.removeprefix("unix://").split("?")[0])
    else:
        client = redis.Redis.from_url(url)
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": postgres,
        "redis": client.info("server")["redis_version"],
    }


def run_claim(args, results: dict) -> None:
    from bench import claims, peers

    print(f"\nclaim throughput: {args.jobs} no-op jobs, {args.concurrency} concurrent processes\n")
    ours, raw = claims.claim_rounds(
        jobs=args.jobs, concurrency=args.concurrency, first=claims._orm_claimer, second=claims._raw_claimer
    )
    ours["queue"], raw["queue"] = "conveyor claim service", "raw SQL (database limit)"
    peer = {
        "queue": "procrastinate (peer)",
        **peers.procrastinate_throughput(jobs=args.jobs, concurrency=args.concurrency),
    }
    ratio_raw = round(ours["claims_per_s"] / raw["claims_per_s"], 2)
    ratio_peer = round(ours["claims_per_s"] / max(1, peer["claims_per_s"]), 2)
    ours["vs_raw"], ours["vs_peer"] = f"{ratio_raw:.2f}x", f"{ratio_peer:.2f}x"
    columns = ["queue", "jobs", "claimed", "double_claims", "claims_per_s", "p50_ms", "p99_ms", "vs_raw", "vs_peer"]
    print_table([ours, raw, peer], columns)
    halves = ", ".join(
        f"{a:,} vs {b:,} ({a / b:.2f}x)" for a, b in zip(ours["rounds_per_s"], raw["rounds_per_s"], strict=True)
    )
    print(f"\nin halves, claimed in the order conveyor, raw, raw, conveyor (claims/s): {halves}")

    print(f"\ndispatch latency (queued -> claimed, idle claimer on LISTEN/NOTIFY), {args.dispatch_samples} samples\n")
    dispatch = claims.dispatch_latency(samples=args.dispatch_samples)
    print_table([dispatch], ["samples", "lost", "p50_ms", "p99_ms", "mean_ms"])
    results["claim"] = {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "claims_per_s": ours["claims_per_s"],
        "claim_ms_p50": ours["p50_ms"],
        "claim_ms_p99": ours["p99_ms"],
        "raw_claims_per_s": raw["claims_per_s"],
        "raw_claim_ms_p50": raw["p50_ms"],
        # Each half's claims/s, in the order they ran: conveyor, raw, raw, conveyor.
        "halves_claims_per_s": [ours["rounds_per_s"][0], *raw["rounds_per_s"], ours["rounds_per_s"][1]],
        "procrastinate_jobs_per_s": peer["claims_per_s"],
        "ratio_vs_raw": ratio_raw,
        "ratio_vs_procrastinate": ratio_peer,
        "double_claims": ours["double_claims"] + raw["double_claims"],
        "procrastinate_repeated_jobs": peer["double_claims"],
        "dispatch_ms_p50": dispatch["p50_ms"],
        "dispatch_ms_p99": dispatch["p99_ms"],
        "dispatch_lost": dispatch["lost"],
    }


def run_idle(args, results: dict) -> None:
    from bench import wakeups, webhooks

    few, many = max(args.idle_jobs * 2, args.idle_waiting // 10), args.idle_waiting
    print(
        f"\nidle runners: {few} and {many} long-polls waiting on cicd.web ({webhooks.web_workers()} processes), "
        f"{args.idle_jobs} jobs queued one at a time\n"
    )
    rows = [wakeups.idle_runners(waiting=waiting, jobs=args.idle_jobs) for waiting in (few, many)]
    print_table(rows, ["waiting", "jobs", "claimed", "claims_per_job", "p50_ms", "p99_ms", "mean_ms"])
    results["idle"] = {
        "waiting": [row["waiting"] for row in rows],
        "jobs": args.idle_jobs,
        "unclaimed": sum(args.idle_jobs - row["claimed"] for row in rows),
        # Claims the server ran per job queued, with the most runners waiting (the one that got
        # the job included), and that over the same with a tenth as many: flat is the target.
        "claims_per_job": rows[1]["claims_per_job"],
        "claims_per_job_few": rows[0]["claims_per_job"],
        "claims_per_job_ratio": round(rows[1]["claims_per_job"] / max(0.01, rows[0]["claims_per_job"]), 2),
        "dispatch_ms_p50": rows[1]["p50_ms"],
        "dispatch_ms_p99": rows[1]["p99_ms"],
        "dispatch_ms_p50_few": rows[0]["p50_ms"],
    }


def run_webhook(args, results: dict) -> None:
    from bench import webhooks

    workers = webhooks.web_workers()
    server = f"cicd.web, {workers} uvicorn process{'es' if workers > 1 else ''}"
    print(f"\nwebhook endpoint ({server}), bursts of {args.webhook_concurrency} signed deliveries\n")
    hooks = webhooks.webhook_latency(concurrency=args.webhook_concurrency, rounds=args.webhook_rounds)
    print_table([hooks], ["deliveries", "concurrency", "statuses", "stored", "per_s", "p50_ms", "p99_ms", "mean_ms"])
    results["webhook"] = {
        "deliveries": hooks["deliveries"],
        "concurrency": hooks["concurrency"],
        "statuses": hooks["statuses"],
        "stored": hooks["stored"],
        "per_s": hooks["per_s"],
        "p50_ms": hooks["p50_ms"],
        "p99_ms": hooks["p99_ms"],
    }


def run_logs(args, results: dict) -> None:
    from bench import logs

    print(f"\nlive logs: {args.log_lines} lines printed by a step, {args.log_viewers} WebSocket viewers\n")
    watched = logs.ingest_with_viewers(lines=args.log_lines, viewers=args.log_viewers)
    rows = [
        logs.ingest_with_viewers(lines=args.log_lines, viewers=0),
        watched,
        logs.ingest_with_viewers(lines=args.log_lines, viewers=args.log_viewers, deflate=False),
        logs.ingest_service_only(lines=args.log_lines),
    ]
    print_table(rows, logs.COLUMNS)
    results["logs"] = {
        "lines": args.log_lines,
        "mb": watched["mb"],
        "viewers": args.log_viewers,
        # The realistic row: the runner over HTTP while viewers watch (permessage-deflate on).
        "ingest_mb_s": watched["ingest_mb_s"],
        "latency_ms_p50": watched["p50_ms"],
        "latency_ms_p99": watched["p99_ms"],
        "bytes_mismatched": sum(row.get("bytes_mismatched", 0) for row in rows),
        "ingest_mb_s_unwatched": rows[0]["ingest_mb_s"],
        "ingest_mb_s_service_only": rows[3]["ingest_mb_s"],
    }


def run_artifacts(args, results: dict) -> None:
    from bench import artifacts

    print(f"\nartifacts: one {args.artifact_mb} MiB artifact up and down through uvicorn (HTTP runner side)\n")
    rows = [artifacts.transfer(size_mb=args.artifact_mb, store=store) for store in ("filesystem", "s3")]
    print_table(rows, artifacts.COLUMNS)
    results["artifacts"] = {
        "size_mb": args.artifact_mb,
        # The slower store of the two: what a runner can count on.
        "upload_mb_s": min(row["upload_mb_s"] for row in rows),
        "download_mb_s": min(row["download_mb_s"] for row in rows),
        "peak_rss_mb": max(max(row["client_peak_rss_mb"], row["server_peak_rss_mb"]) for row in rows),
        "rss_growth_mb": max(max(row["client_rss_growth_mb"], row["server_rss_growth_mb"]) for row in rows),
        **{f"{row['store']}_upload_mb_s": row["upload_mb_s"] for row in rows},
    }


def run_gitcache(args, results: dict) -> None:
    from bench import gitcache

    print(f"\nthe runner's git cache: {args.git_commits} new commits of a repository of {args.git_files} files\n")
    rows = gitcache.new_commits(files=args.git_files, commits=args.git_commits)
    print_table(rows, gitcache.COLUMNS)
    cache, snapshot = rows
    results["gitcache"] = {
        "repository_mb": cache["repository_mb"],
        "ms_p50": cache["ms_p50"],
        "kb_added_p50": cache["kb_added_p50"],
        "snapshot_ms_p50": snapshot["ms_p50"],
        "snapshot_kb_added_p50": snapshot["kb_added_p50"],
    }


def run_e2e(args, results: dict) -> None:
    from bench import e2e

    print(
        f"\nend to end: {args.e2e_runs} pushes at once, then {args.e2e_latency_runs} one at a time, of a "
        f"{e2e.JOBS_PER_RUN}-job DAG (webhook -> Celery -> {e2e.RUNNERS} runners, {args.e2e_mode} mode)\n"
    )
    rows, repository_id = e2e.end_to_end(runs=args.e2e_runs, latency_runs=args.e2e_latency_runs, mode=args.e2e_mode)
    print_table(rows, e2e.COLUMNS)
    results["e2e"] = {"runner_mode": args.e2e_mode, **e2e.figures(rows)}

    from bench import sizes

    print("\nrows and bytes per run (the runs above; docs/scaling.md projects them)\n")
    size_rows = sizes.per_run(repository_id)
    print_table(size_rows, sizes.COLUMNS)
    results["rows"] = sizes.figures(size_rows)


def run_growth(args, results: dict) -> None:
    from bench import growth

    print(f"\ngrowth: the claim benchmark ({args.growth_queued} jobs) with 0, 10x and 100x as many finished jobs\n")
    rows = growth.claim_growth(queued=args.growth_queued, concurrency=args.concurrency)
    print_table(rows, growth.COLUMNS)
    results["growth"] = growth.figures(rows)


def _value(results: dict, key: str):
    section, name = key.split(".", 1)
    return results.get(section, {}).get(name)


def print_summary(results: dict) -> None:
    rows = []
    for key, target, check in TARGETS:
        value = _value(results, key)
        if value is None:
            continue
        verdict = "" if check is None else ("ok" if check(value) else "MISSED")
        rows.append({"figure": key, "value": value, "target": target, "": verdict})
    print("\nsummary\n")
    print_table(rows, ["figure", "value", "target", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description="Conveyor benchmarks")
    parser.add_argument("--quick", action="store_true", help="About a tenth of the sizes (make bench-quick).")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"Comma-separated subset of {','.join(SECTIONS)}.")
    parser.add_argument("--jobs", type=int, help="Queued no-op jobs for the claim benchmark.")
    parser.add_argument("--concurrency", type=int, default=8, help="Concurrent claimers.")
    parser.add_argument("--dispatch-samples", type=int)
    parser.add_argument("--idle-waiting", type=int, help="Long-polls waiting in the idle-runners benchmark.")
    parser.add_argument("--idle-jobs", type=int, help="Jobs queued one at a time while they wait.")
    parser.add_argument("--webhook-concurrency", type=int, default=50)
    parser.add_argument("--webhook-rounds", type=int)
    parser.add_argument("--log-lines", type=int, help="Lines the log benchmark's step prints.")
    parser.add_argument("--log-viewers", type=int, help="WebSocket viewers of the log benchmark.")
    parser.add_argument("--artifact-mb", type=int, help="Size of the artifact transfer benchmark.")
    parser.add_argument("--git-files", type=int, help="Files of the git cache benchmark's repository.")
    parser.add_argument("--git-commits", type=int, help="New commits the git cache benchmark fetches.")
    parser.add_argument("--e2e-runs", type=int, help="Runs pushed at once (capacity phase).")
    parser.add_argument("--e2e-latency-runs", type=int, help="Runs pushed one at a time (latency phase).")
    parser.add_argument("--e2e-mode", choices=["http", "orm"], default="http", help="How the runners connect.")
    parser.add_argument("--growth-queued", type=int, help="Queued jobs of the growth benchmark.")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    sizes = _sizes(args)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    setup_django()
    ensure_database()
    started = time.perf_counter()
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "sizes": sizes,
        "machine": machine(),
    }
    runners = {
        "claim": run_claim,
        "idle": run_idle,
        "webhook": run_webhook,
        "logs": run_logs,
        "artifacts": run_artifacts,
        "gitcache": run_gitcache,
        "e2e": run_e2e,
        "growth": run_growth,
    }
    for name in SECTIONS:
        if name in only:
            runners[name](args, results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_summary(results)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    args.output.write_text(text)
    dated = args.output.parent / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{results['mode']}.json"
    dated.write_text(text)
    print(f"\nwritten: {args.output} (and {dated.name}); {results['seconds']} s in all")


if __name__ == "__main__":
    main()
