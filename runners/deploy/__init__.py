"""Deploy jobs: the `deploy:` section of a job and the Kubernetes rollout that carries it out.

A pure library (no Django models): the runner parses the job's `deploy:` mapping with
`parse_deploy_spec`, calls `rollout(spec, log=...)` and streams the log lines into the job log.
"""

from runners.deploy.kubernetes import RolloutResult, RolloutStatus, api_client_for, rollout
from runners.deploy.spec import DeploySpec, DeploySpecError, SmokeTest, Strategy, parse_deploy_spec

__all__ = [
    "DeploySpec",
    "DeploySpecError",
    "RolloutResult",
    "RolloutStatus",
    "SmokeTest",
    "Strategy",
    "api_client_for",
    "parse_deploy_spec",
    "rollout",
]
