from importlib import import_module

from django.db import migrations

# conveyor_claim_job (0004) again, with two changes measured by `make bench` (bench/README.md,
# "claim"):
#
# - Three more SET clauses, enable_hashjoin, enable_mergejoin and enable_seqscan off: every
#   row the claim reads has an index to be found by (the queue job_queue_idx; the job, its
#   run, pipeline and repository their primary keys; the steps and the repository's
#   variables their foreign-key indexes), and that is now the only plan left. While a table
#   is small, or its statistics say so, the planner read it whole instead, on every claim:
#   runs_job for the UPDATE by primary key and for the join, runs_pipelinerun into a hash
#   join. Each such claim cost grows with the table until the next ANALYZE, as the queue
#   scan's did before 0004; the nested loop over primary keys is also the cheaper plan at
#   any size.
# - The job's and the run's ids come back as text, as the runner is sent them: no UUID
#   object built and printed back per claim.
CLAIM_FUNCTION = """
CREATE FUNCTION conveyor_claim_job(
    runner_tags varchar[], runner uuid, claimed_at timestamptz, lease_until timestamptz, job_token_hash varchar
) RETURNS TABLE (
    id text, name text, stage text, attempt integer, timeout_s integer, spec jsonb,
    run_id text, run_number integer, commit_sha text, commit_message text, branch text, is_tag boolean,
    run_trigger text, run_variables jsonb, repository_name text, clone_url text, default_branch text,
    steps json, has_variables boolean
)
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_sort = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    claimed_id uuid;
BEGIN
    SELECT queued.id INTO claimed_id FROM runs_job AS queued
    WHERE queued.status = 'QUEUED' AND queued.tags <@ runner_tags
    ORDER BY queued.queue_key
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF claimed_id IS NULL THEN
        RETURN;
    END IF;
    -- By primary key only: this transaction holds the row's lock, taken on a row that was
    -- QUEUED (FOR UPDATE re-checks the condition on the latest version). A status condition
    -- here would let the planner walk job_queue_idx for the join instead.
    UPDATE runs_job
    SET status = 'RUNNING', runner_id = runner, started_at = claimed_at,
        lease_expires_at = lease_until, token_hash = job_token_hash
    WHERE runs_job.id = claimed_id;
    RETURN QUERY
    SELECT job.id::text, job.name::text, job.stage::text, job.attempt::integer, job.timeout_s::integer, job.spec,
           run.id::text, run.number::integer, run.commit_sha::text, run.commit_message, run.branch::text, run.is_tag,
           run.trigger::text, run.variables, repository.name::text, repository.clone_url::text,
           repository.default_branch::text,
           (SELECT coalesce(json_agg(json_build_array(step.id, step.index, step.kind, step.name, step.command)
                                     ORDER BY step.index), '[]')
            FROM runs_step AS step WHERE step.job_id = job.id),
           EXISTS (SELECT 1 FROM pipelines_variable AS variable WHERE variable.repository_id = repository.id)
    FROM runs_job AS job
    JOIN runs_pipelinerun AS run ON run.id = job.run_id
    JOIN pipelines_pipeline AS pipeline ON pipeline.id = run.pipeline_id
    JOIN pipelines_repository AS repository ON repository.id = pipeline.repository_id
    WHERE job.id = claimed_id;
END $$;
"""

previous = import_module("runners.migrations.0004_claim_function")


class Migration(migrations.Migration):
    dependencies = [("runners", "0004_claim_function")]

    operations = [
        migrations.RunSQL(
            [previous.DROP_CLAIM_FUNCTION, CLAIM_FUNCTION],
            [previous.DROP_CLAIM_FUNCTION, previous.CLAIM_FUNCTION],
        )
    ]
