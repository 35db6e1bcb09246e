from django.db import migrations

# The claim (runners.services.job_claim) as one PL/pgSQL function, for two reasons measured
# by `make bench` (bench/README.md, "claim"):
#
# - The plan of the candidate query must walk job_queue_idx in queue_key order and stop at
#   the first job the runner may take. With statistics that have not caught up with a burst
#   of queued jobs (autovacuum analyzes after 10% of a large table changed), the planner
#   guessed "a handful of queued rows", chose a bitmap scan and sorted the whole queue on
#   every claim: each claim cost grew with the queue (0.5 ms at 2,000 queued jobs). The
#   function's SET clauses rule that plan out: bitmap scans and sorts are the only
#   alternatives to the ordered index scan here.
# - PL/pgSQL prepares its statements once per connection: the claim is not planned again on
#   every call (planning the joins cost more than executing them).
#
# One call takes the job and returns what the runner needs: the row is locked (SKIP LOCKED:
# concurrent claimers pass over it), set RUNNING, and read back joined to its run,
# repository and steps. has_variables says whether the repository has CI/CD
# variables, so a claim costs a second query only when it does. Column changes to these
# tables must update this function (runners/tests/test_claims.py and tests/test_secrets.py read
# every field back).
CLAIM_FUNCTION = """
CREATE FUNCTION conveyor_claim_job(
    runner_tags varchar[], runner uuid, claimed_at timestamptz, lease_until timestamptz, job_token_hash varchar
) RETURNS TABLE (
    id uuid, name text, stage text, attempt integer, timeout_s integer, spec jsonb,
    run_id uuid, run_number integer, commit_sha text, commit_message text, branch text, is_tag boolean,
    run_trigger text, run_variables jsonb, repository_name text, clone_url text, default_branch text,
    steps json, has_variables boolean
)
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_sort = off
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
    SELECT job.id, job.name::text, job.stage::text, job.attempt::integer, job.timeout_s::integer, job.spec,
           run.id, run.number::integer, run.commit_sha::text, run.commit_message, run.branch::text, run.is_tag,
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

DROP_CLAIM_FUNCTION = "DROP FUNCTION IF EXISTS conveyor_claim_job(varchar[], uuid, timestamptz, timestamptz, varchar);"


class Migration(migrations.Migration):
    dependencies = [
        ("runners", "0003_registration_token_max_uses"),
        ("runs", "0006_encrypt_existing_slack_webhook_urls"),
        ("pipelines", "0005_encrypt_existing_secrets"),
    ]

    operations = [migrations.RunSQL(CLAIM_FUNCTION, DROP_CLAIM_FUNCTION)]
