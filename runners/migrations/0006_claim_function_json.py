from importlib import import_module

from django.db import migrations

# conveyor_claim_job (0005) again, returning its row as ONE json value instead of a set of
# 19 columns that the claim's statement then built into a json array: no tuplestore for the
# set, no second projection over it. PostgreSQL's CPU per claim and complete, one claimer,
# interleaved (bench/README.md, "claim"): 174-178 us before, 162-170 after.
# The array starts with runners.variables.JobFacts' fields, in their order (the job's spec and
# the run's variables never null), then the job's timeout, its steps, and whether its
# repository has CI/CD variables: runners.services.job_claim reads it by position. The
# planner settings and statements are 0005's.
CLAIM_FUNCTION = """
CREATE FUNCTION conveyor_claim_job(
    runner_tags varchar[], runner uuid, claimed_at timestamptz, lease_until timestamptz, job_token_hash varchar
) RETURNS json
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
    claimed json;
BEGIN
    SELECT queued.id INTO claimed_id FROM runs_job AS queued
    WHERE queued.status = 'QUEUED' AND queued.tags <@ runner_tags
    ORDER BY queued.queue_key
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF claimed_id IS NULL THEN
        RETURN NULL;
    END IF;
    -- By primary key only: this transaction holds the row's lock, taken on a row that was
    -- QUEUED (FOR UPDATE re-checks the condition on the latest version). A status condition
    -- here would let the planner walk job_queue_idx for the join instead.
    UPDATE runs_job
    SET status = 'RUNNING', runner_id = runner, started_at = claimed_at,
        lease_expires_at = lease_until, token_hash = job_token_hash
    WHERE runs_job.id = claimed_id;
    SELECT json_build_array(
               job.id::text, job.name, job.stage, job.attempt, coalesce(job.spec, '{}'),
               run.id::text, run.number, run.trigger, run.commit_sha, run.commit_message, run.branch, run.is_tag,
               coalesce(run.variables, '{}'), repository.name, repository.default_branch, repository.clone_url,
               job.timeout_s,
               (SELECT coalesce(json_agg(json_build_array(step.id, step.index, step.kind, step.name, step.command)
                                         ORDER BY step.index), '[]')
                FROM runs_step AS step WHERE step.job_id = job.id),
               EXISTS (SELECT 1 FROM pipelines_variable AS variable WHERE variable.repository_id = repository.id))
    INTO claimed
    FROM runs_job AS job
    JOIN runs_pipelinerun AS run ON run.id = job.run_id
    JOIN pipelines_pipeline AS pipeline ON pipeline.id = run.pipeline_id
    JOIN pipelines_repository AS repository ON repository.id = pipeline.repository_id
    WHERE job.id = claimed_id;
    RETURN claimed;
END $$;
"""

previous = import_module("runners.migrations.0005_claim_function_index_joins")
initial = import_module("runners.migrations.0004_claim_function")


class Migration(migrations.Migration):
    dependencies = [("runners", "0005_claim_function_index_joins")]

    operations = [
        migrations.RunSQL(
            [initial.DROP_CLAIM_FUNCTION, CLAIM_FUNCTION],
            [initial.DROP_CLAIM_FUNCTION, previous.CLAIM_FUNCTION],
        )
    ]
