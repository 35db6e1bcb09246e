"""Shared plumbing of the benchmarks: a database of their own, percentiles, the table."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence

BENCH_DB = os.environ.get("CONVEYOR_BENCH_DB", "conveyor_bench")


def setup_django(db_name: str = BENCH_DB) -> None:
    """Configure Django against the benchmark database (never the real one)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cicd.settings")
    from django.conf import settings

    if not settings.configured or not getattr(setup_django, "done", False):
        django.setup()
        settings.DATABASES["default"]["NAME"] = db_name
        settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
        from django.db import connections

        connections["default"].settings_dict["NAME"] = db_name
        setup_django.done = True


def server_params(*, dbname: str | None = None) -> dict:
    """psycopg connection parameters for the server the benchmarks run on (another database on it if named)."""
    setup_django()
    from runners.backends import listen_params

    params = listen_params()
    if dbname:
        params["dbname"] = dbname
    return params


def ensure_database() -> None:
    """Create and migrate the benchmark database."""
    import psycopg
    from django.conf import settings
    from django.core.management import call_command

    with psycopg.connect(autocommit=True, **server_params(dbname="postgres")) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    assert settings.DATABASES["default"]["NAME"] == BENCH_DB
    call_command("migrate", verbosity=0)


def raw_connect():
    import psycopg

    return psycopg.connect(autocommit=True, **server_params())


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 50) * 1000, 2),
        "p99_ms": round(percentile(samples, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(samples) * 1000, 2) if samples else float("nan"),
    }


def print_table(rows: list[dict[str, object]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
