"""Rows and bytes a run leaves in the database, measured on real runs (the e2e benchmark's).

For each table a run writes to: rows per run, heap bytes per row (`pg_column_size` of the
row: its data and tuple header, + 4 bytes of line pointer), and index bytes per row: for
every btree index of the table, the entries these rows put in it (a partial index only
those matching its predicate) at 8 bytes of index tuple header + the keys' `pg_column_size`
(aligned to 8) + a 4-byte line pointer, over a leaf fill of 70% (random UUID keys split
pages; sequential keys fill 90%). Computed from the rows, so that the churn of other
benchmarks in the same database (bloated indexes) does not count.
docs/scaling.md projects these to 500 and 100,000 runs a day. `python -m bench.sizes
REPOSITORY` measures the runs of another repository.
"""

from __future__ import annotations

import sys

from bench.common import print_table, raw_connect, setup_django

# Table -> how to select the rows of the repository's runs (%(repository)s is its id).
_RUNS = "SELECT run.id FROM runs_pipelinerun AS run JOIN pipelines_pipeline AS p ON p.id = run.pipeline_id "
_RUNS += "WHERE p.repository_id = %(repository)s"
_JOBS = f"SELECT id FROM runs_job WHERE run_id IN ({_RUNS})"  # noqa: S608 (constant text)
_STEPS = f"SELECT id FROM runs_step WHERE job_id IN ({_JOBS})"  # noqa: S608
TABLES = {
    "pipelines_webhookdelivery": "repository_id = %(repository)s",
    "runs_pipelinerun": f"id IN ({_RUNS})",
    "runs_job": f"run_id IN ({_RUNS})",
    "runs_jobdependency": f"job_id IN ({_JOBS})",
    "runs_step": f"job_id IN ({_JOBS})",
    "logs_steplog": f"step_id IN ({_STEPS})",
    "logs_joblog": f"job_id IN ({_JOBS})",
}
LINE_POINTER = 4
LEAF_FILL = 0.7
COLUMNS = ["table", "rows_per_run", "heap_bytes_per_row", "index_bytes_per_row", "bytes_per_run"]


def per_run(repository_id: int) -> list[dict[str, object]]:
    with raw_connect() as conn:
        params = {"repository": repository_id}
        runs = conn.execute(f"SELECT count(*) FROM ({_RUNS}) AS r", params).fetchone()[0]  # noqa: S608
        if not runs:
            raise ValueError(f"repository {repository_id} has no runs to measure")
        rows = []
        for table, where in TABLES.items():
            count, heap = conn.execute(
                f"SELECT count(*), coalesce(avg(pg_column_size(t.*)), 0) FROM {table} AS t WHERE {where}",  # noqa: S608
                params,
            ).fetchone()
            heap_row = float(heap) + LINE_POINTER if count else 0.0
            index_row = _index_bytes(conn, table, where, params) / count if count else 0.0
            rows.append(
                {
                    "table": table,
                    "rows_per_run": round(count / runs, 2),
                    "heap_bytes_per_row": round(heap_row),
                    "index_bytes_per_row": round(index_row),
                    "bytes_per_run": round(count / runs * (heap_row + index_row)),
                }
            )
    return rows


def _index_bytes(conn, table: str, where: str, params: dict) -> float:
    """Bytes the selected rows take in the table's indexes (see the module docstring)."""
    indexes = conn.execute(
        """
        SELECT array_agg(attribute.attname ORDER BY key.ordinality), pg_get_expr(ix.indpred, ix.indrelid)
        FROM pg_index AS ix
        CROSS JOIN LATERAL unnest(ix.indkey) WITH ORDINALITY AS key(attnum, ordinality)
        JOIN pg_attribute AS attribute ON attribute.attrelid = ix.indrelid AND attribute.attnum = key.attnum
        WHERE ix.indrelid = %(table)s::regclass
        GROUP BY ix.indexrelid, ix.indpred, ix.indrelid
        """,
        {"table": table},
    ).fetchall()
    total = 0.0
    for columns, predicate in indexes:
        keys = " + ".join(f'coalesce(pg_column_size(t."{column}"), 0)' for column in columns)
        condition = f"({where}) AND ({predicate})" if predicate else where
        entries, key_bytes = conn.execute(
            f"SELECT count(*), coalesce(sum(8 * ceil(({keys}) / 8.0)), 0) FROM {table} AS t WHERE {condition}",  # noqa: S608
            params,
        ).fetchone()
        total += (entries * (8 + LINE_POINTER) + float(key_bytes)) / LEAF_FILL
    return total


def figures(rows: list[dict[str, object]]) -> dict[str, object]:
    """The `rows` section of latest.json: per table, and the total bytes a run costs."""
    return {
        "bytes_per_run": sum(row["bytes_per_run"] for row in rows),
        **{
            row["table"]: {k: v for k, v in row.items() if k != "table"}
            for row in rows
            if isinstance(row["table"], str)
        },
    }


def main() -> None:
    setup_django()
    from pipelines.models import Repository

    if len(sys.argv) > 1:
        repository = Repository.objects.get(name=sys.argv[1])
    else:
        repository = Repository.objects.filter(name__startswith="bench-e2e-").order_by("-pk").first()
        if repository is None:
            raise SystemExit("no e2e benchmark runs to measure: run `python -m bench --quick --only e2e` first")
    rows = per_run(repository.pk)
    print(f"rows and bytes per run of {repository.name}\n")
    print_table(rows, COLUMNS)
    print(f"\n{figures(rows)['bytes_per_run']} bytes per run in all")


if __name__ == "__main__":
    main()
