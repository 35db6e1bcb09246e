"""`manage.py conveyor_run REPOSITORY`: start a run through the REST API and follow its log.

    export CONVEYOR_URL=https://ci.example.com CONVEYOR_TOKEN=cvp_...   # a personal API token
    manage.py conveyor_run acme-web --branch main --var DEPLOY=1 --follow

Only HTTP: it runs anywhere the API is reachable, with the token's owner's roles (developer or
more to start a run). With --follow it prints every job's log as it is written, each line
prefixed with the job's name, until the run finishes (exit code 0 for success, 1 otherwise)
or waits for a person (a blocking manual job such as a production deploy: exit code 0, with
the run's URL to go on from).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELLED"}
TERMINAL_JOB = {"SUCCESS", "FAILURE", "CANCELLED", "SKIPPED"}
NOT_STARTED = {"PENDING", "QUEUED", "MANUAL", "SCHEDULED"}
MAX_TRANSIENT_ERRORS = 10  # consecutive network errors before giving up


@dataclass
class StepCursor:
    offset: int = 0
    complete: bool = False
    partial: str = ""


@dataclass
class JobFollow:
    name: str
    steps: dict[str, StepCursor] = field(default_factory=dict)
    step_order: list[str] = field(default_factory=list)
    announced: bool = False
    done: bool = False


class Api:
    def __init__(self, url: str, token: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ConnectionError(f"{self.url}: {exc}") from exc


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]


class Command(BaseCommand):
    help = "Start a run of a repository's pipeline through the REST API and, with --follow, print its log."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("repository", help="The repository's name.")
        parser.add_argument("--pipeline", default="", help="The pipeline's name (needed if there are several).")
        parser.add_argument(
            "--branch", "--ref", dest="ref", default="", help="Branch or tag (default: the default branch)."
        )
        parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="A variable (repeatable).")
        parser.add_argument("--follow", action="store_true", help="Print the jobs' logs until the run ends.")
        parser.add_argument("--url", default=os.environ.get("CONVEYOR_URL") or settings.CONVEYOR_BASE_URL)
        parser.add_argument(
            "--token", default=os.environ.get("CONVEYOR_TOKEN", ""), help="A personal API token (or CONVEYOR_TOKEN)."
        )
        parser.add_argument("--poll-interval", type=float, default=1.0, help="Seconds between polls (default 1).")
        parser.add_argument("--timeout", type=float, default=30.0, help="Timeout of one HTTP request (default 30 s).")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["token"]:
            raise CommandError("a personal API token is needed: --token or CONVEYOR_TOKEN (create one on /tokens/)")
        api = Api(options["url"], options["token"], options["timeout"])
        variables = self.variables(options["var"])
        try:
            ref = options["ref"] or self.default_branch(api, options["repository"])
            run = self.trigger(api, options["repository"], options["pipeline"], ref, variables)
        except ConnectionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Started {run['repository']}/{run['pipeline_name']} #{run['number']} on {ref}: {run['url']}")
        if not options["follow"]:
            return
        status = self.follow(api, run, poll=options["poll_interval"])
        if status not in {"SUCCESS", "BLOCKED"}:
            raise CommandError(f"run #{run['number']} ended {status}")

    @staticmethod
    def variables(pairs: list[str]) -> dict[str, str]:
        variables = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise CommandError(f"--var takes NAME=VALUE, got {pair!r}")
            variables[name] = value
        return variables

    def default_branch(self, api: Api, repository: str) -> str:
        response = api.request("GET", f"/api/v1/repositories/{repository}/")
        if response.status_code != 200:
            raise CommandError(f"repository {repository}: {response.status_code} {_message(response)}")
        return response.json()["default_branch"]

    def trigger(self, api: Api, repository: str, pipeline: str, ref: str, variables: dict[str, str]) -> dict:
        body = {"repository": repository, "ref": ref, "variables": variables}
        if pipeline:
            body["pipeline"] = pipeline
        response = api.request("POST", "/api/v1/runs/", json=body)
        if response.status_code != 201:
            raise CommandError(f"the run was not started: {response.status_code} {_message(response)}")
        return response.json()

    # --- Following.

    def follow(self, api: Api, run: dict, *, poll: float) -> str:
        jobs: dict[str, JobFollow] = {}
        errors = 0
        while True:
            try:
                detail = self.get_json(api, f"/api/v1/runs/{run['id']}/")
                current = [job for stage in detail["stages"] for job in stage["jobs"]]
                for job in current:
                    follow = jobs.setdefault(job["id"], JobFollow(name=job["name"]))
                    if job["status"] not in NOT_STARTED and not follow.done:
                        self.print_job(api, follow, job)
                errors = 0
            except ConnectionError as exc:
                errors += 1
                if errors >= MAX_TRANSIENT_ERRORS:
                    raise CommandError(str(exc)) from None
                time.sleep(poll)
                continue
            status = detail["status"]
            busy = any(job["status"] in {"QUEUED", "RUNNING", "PENDING"} for job in current)
            unprinted = any(not jobs[job["id"]].done for job in current if job["status"] in TERMINAL_JOB)
            if status in TERMINAL_RUN and not unprinted:
                self.summary(detail)
                return status
            if status == "BLOCKED" and not busy and not unprinted:
                waiting = [job["name"] for job in current if job["status"] == "MANUAL"]
                self.stdout.write(f"Run #{detail['number']} waits for a person ({', '.join(waiting)}): {detail['url']}")
                return status
            time.sleep(poll)

    def get_json(self, api: Api, path: str) -> Any:
        response = api.request("GET", path)
        if response.status_code != 200:
            raise CommandError(f"GET {path}: {response.status_code} {_message(response)}")
        return response.json()

    def print_job(self, api: Api, follow: JobFollow, job: dict) -> None:
        if not follow.announced:
            self.stdout.write(self.style.MIGRATE_HEADING(f"--- {job['name']} ---"))
            follow.announced = True
        finished = job["status"] in TERMINAL_JOB
        if not follow.step_order or finished:
            steps = self.get_json(api, f"/api/v1/steps/?job={job['id']}&page_size=200")["results"]
            for step in sorted(steps, key=lambda s: s["index"]):
                if step["id"] not in follow.steps:
                    follow.steps[step["id"]] = StepCursor()
                    follow.step_order.append(step["id"])
        for step_id in follow.step_order:
            cursor = follow.steps[step_id]
            while not cursor.complete:
                response = api.request("GET", f"/api/v1/steps/{step_id}/log/", params={"offset": cursor.offset})
                if response.status_code != 200:
                    raise CommandError(f"log of {job['name']}: {response.status_code} {_message(response)}")
                text = response.content.decode("utf-8", errors="replace")
                self.print_lines(follow, cursor, text)
                cursor.offset = int(response.headers.get("X-Log-End", cursor.offset))
                cursor.complete = response.headers.get("X-Log-Complete") == "true"
                if not text:
                    break
            if cursor.complete and cursor.partial:
                self.stdout.write(f"[{follow.name}] {cursor.partial}")
                cursor.partial = ""
        if finished and all(follow.steps[s].complete for s in follow.step_order):
            suffix = f" ({job['status_reason']})" if job.get("status_reason") else ""
            self.stdout.write(f"[{follow.name}] {job['status']}{suffix}")
            follow.done = True

    def print_lines(self, follow: JobFollow, cursor: StepCursor, text: str) -> None:
        lines = (cursor.partial + text).split("\n")
        cursor.partial = lines.pop()
        for line in lines:
            self.stdout.write(f"[{follow.name}] {line}")

    def summary(self, detail: dict) -> None:
        duration = detail.get("duration_s")
        took = f" in {round(duration)}s" if duration is not None else ""
        line = f"Run #{detail['number']}: {detail['status']}{took}: {detail['url']}"
        self.stdout.write(self.style.SUCCESS(line) if detail["status"] == "SUCCESS" else self.style.ERROR(line))
