"""cicd.db: hot statements prepared on Django's connection, and whole rows read by them
turned into the same model instances the ORM builds."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from cicd.db import model_columns, models_from_rows, prepared_cursor
from runs.models import Job, PipelineRun
from runs.tests.factories import create_run, job

pytestmark = pytest.mark.django_db


def _read(model, alias, where, params):
    sql = f"SELECT {model_columns(model, alias)} FROM {model._meta.db_table} AS {alias} WHERE {where}"  # noqa: S608
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        return models_from_rows(model, cursor.fetchall())


def _fields(instance) -> dict:
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


def test_a_row_read_whole_becomes_the_instance_the_orm_reads_json_decoded() -> None:
    run = create_run(job("build", "build", variables={"GREETING": "hi"}, allow_failure_exit_codes=[3]))
    PipelineRun.objects.filter(pk=run.pk).update(variables={"DEPLOY": "yes"})

    (read_job,) = _read(Job, "job", "job.run_id = %s", [run.pk])
    (read_run,) = _read(PipelineRun, "run", "run.id = %s", [run.pk])

    assert _fields(read_job) == _fields(Job.objects.get(run=run))
    assert read_job.spec["variables"] == {"GREETING": "hi"}
    assert _fields(read_run) == _fields(PipelineRun.objects.get(pk=run.pk))
    assert read_run.variables == {"DEPLOY": "yes"}
    assert not read_run._state.adding


def test_prepared_statements_are_logged_with_their_parameters_where_django_logs_queries() -> None:
    run = create_run(job("build", "build"))

    with CaptureQueriesContext(connection) as queries:
        _read(PipelineRun, "run", "run.id = %s", [run.pk])

    assert str(run.pk).replace("-", "") in queries.captured_queries[0]["sql"].replace("-", "")


# --- The reused cursor: one per connection, handed to one block at a time.


def test_blocks_one_after_another_share_a_cursor_and_a_block_inside_another_gets_its_own() -> None:
    run = create_run(job("build", "build"), job("test", "test"))
    with prepared_cursor() as first:
        first.execute("SELECT name FROM runs_job WHERE run_id = %s ORDER BY name", [run.pk])
        with prepared_cursor() as inner:
            assert inner is not first
            inner.execute("SELECT number FROM runs_pipelinerun WHERE id = %s", [run.pk])
            assert inner.fetchone() == (run.number,)
        # The outer block's rows are still its own.
        assert first.fetchall() == [("build",), ("test",)]
    with prepared_cursor() as again:
        assert again is first
        again.execute("SELECT count(*) FROM runs_job WHERE run_id = %s", [run.pk])
        assert again.fetchone() == (2,)


def test_a_failed_statement_raises_djangos_error_and_the_cursor_serves_the_next_block() -> None:
    from django.db import DataError, transaction

    with pytest.raises(DataError), transaction.atomic(), prepared_cursor() as cursor:
        cursor.execute("SELECT %s::integer", ["not a number"])
    with prepared_cursor() as cursor:
        cursor.execute("SELECT %s::integer + 1", [41])
        assert cursor.fetchone() == (42,)


@pytest.mark.django_db(transaction=True)  # the connection is closed: no test transaction around it
def test_a_block_lets_go_of_its_result_and_a_new_connection_gets_a_cursor_of_its_own() -> None:
    with prepared_cursor() as cursor:
        cursor.execute("SELECT repeat('x', 100000)")
        assert len(cursor.fetchone()[0]) == 100000
    assert cursor.cursor.pgresult is None

    connection.close()
    with prepared_cursor() as fresh:
        fresh.execute("SELECT 1")
        assert fresh.fetchone() == (1,)
    assert fresh is not cursor and fresh.cursor.connection is connection.connection
