"""The runner's HTTP side: a client of the runner API and a Backend built on it."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import requests

from runners.artifacts import HttpArtifacts
from runners.executors.base import JobResult
from runners.services import ClaimedJob, ClaimedStep, StepEnd

logger = logging.getLogger(__name__)

_TIMEOUT = (5, 60)  # connect, read
_LONG_POLL_S = 25
# Sessions (each with its kept-alive connection) a finished thread leaves for the next one.
_IDLE_SESSIONS = 8
# Jobs whose artifact lists are held (prefetched and not used yet) at most.
_PREFETCHED_JOBS = 64


class RunnerApiError(Exception):
    pass


class RunnerTokenRefused(RunnerApiError):
    """The server no longer accepts this runner's token (revoked, or never valid): retrying cannot help."""


class RunnerApiClient:
    def __init__(self, url: str, token: str = ""):
        self.base = url.rstrip("/") + "/api/runner/"
        self.token = token
        self._local = threading.local()  # a Session is not thread-safe: one per thread
        # Every job runs in a thread of its own: a session is handed on to the next thread
        # rather than closed, so that a job's calls reuse a connection the server has open.
        self._idle: list[requests.Session] = []
        self._idle_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            with self._idle_lock:
                session = self._idle.pop() if self._idle else None
            if session is None:
                session = self._new_session()
            self._local.session = session
        return self._local.session

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # Jobs must never see this token; it lives only in this process's memory.
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        # With trust_env, requests reads proxies, NO_PROXY and the CA bundle from the environment
        # on every request, walking all of os.environ several times: a third of its CPU per call,
        # more in a large environment, on a machine the runner shares with its jobs. Every call
        # of this session goes to the one server, so they are read once here, as requests would
        # for its URL. .netrc is not read at all: its credentials would replace our Authorization.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(self.base)
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        return session

    def post(
        self, path: str, body: dict[str, Any] | None = None, *, timeout=_TIMEOUT, token: str | None = None
    ) -> requests.Response:
        # `token` replaces the runner token for this call (a job's own token, for its log).
        headers = {"Authorization": f"Bearer {token}"} if token else None
        response = self.session.post(self.base + path, json=body or {}, timeout=timeout, headers=headers)
        if response.status_code >= 500:
            # Treated like a dropped connection: the caller retries with backoff.
            raise requests.ConnectionError(f"server error {response.status_code} on {path}")
        return response

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        """Any call of the runner API (artifact transfers: PUT bodies, streamed GETs); `token`
        as in post(). A 5xx is raised as a dropped connection, for the caller to retry."""
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", _TIMEOUT)
        response = self.session.request(method, self.base + path, headers=headers, **kwargs)
        if response.status_code >= 500:
            response.close()
            raise requests.ConnectionError(f"server error {response.status_code} on {path}")
        return response

    def register(self, *, registration_token: str, name: str, tags: list[str], concurrency: int, executor: str):
        response = self.post(
            "register",
            {
                "registration_token": registration_token,
                "name": name,
                "tags": tags,
                "concurrency": concurrency,
                "executor": executor,
            },
        )
        if response.status_code != 201:
            raise RunnerApiError(f"registration refused ({response.status_code}): {_detail(response)}")
        data = response.json()
        return data["id"], data["token"]

    def close(self) -> None:
        """This thread is done with its session: kept for the next thread (a few), else closed."""
        session = getattr(self._local, "session", None)
        if session is None:
            return
        del self._local.session
        with self._idle_lock:
            if len(self._idle) < _IDLE_SESSIONS:
                self._idle.append(session)
                return
        session.close()


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", response.text[:200]))
    except ValueError:
        return response.text[:200]


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    # A newer server may send fields this runner does not know yet: they are left out, so
    # runners and server need not be upgraded in one step.
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def _job_from_json(data: dict[str, Any]) -> ClaimedJob:
    steps = [ClaimedStep(**_known(ClaimedStep, step)) for step in data.pop("steps")]
    return ClaimedJob(steps=steps, **_known(ClaimedJob, data))


class HttpBackend:
    def __init__(self, *, url: str, token: str):
        self.client = RunnerApiClient(url, token)
        self._pending: ClaimedJob | None = None
        # A claimed job's artifact lists (what it depends on, their images): in the claim's
        # answer, or (an older server) asked for as soon as it is claimed, so that they are in
        # by the time its checkout is done (see _Prefetched).
        self._prefetch = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prefetch")
        self._prefetched: OrderedDict[str, dict[str, Future]] = OrderedDict()
        self._prefetched_lock = threading.Lock()
        self.on_job_lost = None  # set by the runner loop (runners.worker.Backend)

    @property
    def artifacts(self):
        """Artifact transfers of this runner's jobs (runners.artifacts)."""
        return _Prefetched(self.client, self)

    def _start_prefetch(self, job: ClaimedJob) -> None:
        # Both lists are of jobs that have finished (a job is queued once what it needs has):
        # asked for now or after the checkout, the answer is the same.
        transport = HttpArtifacts(self.client)
        calls = {"dependencies": transport.dependencies, "images": transport.images}
        self._keep(job, {name: self._prefetch.submit(call, job) for name, call in calls.items()})

    def _hold(self, job: ClaimedJob, answers: dict[str, Any]) -> None:
        """Keep answers the claim brought for the job, as a prefetch would have them."""
        futures: dict[str, Future] = {}
        for name, answer in answers.items():
            futures[name] = Future()
            futures[name].set_result(answer)
        self._keep(job, futures)

    def _keep(self, job: ClaimedJob, futures: dict[str, Future]) -> None:
        with self._prefetched_lock:
            self._prefetched[job.id] = futures
            while len(self._prefetched) > _PREFETCHED_JOBS:
                self._prefetched.popitem(last=False)

    def take_prefetched(self, job: ClaimedJob, name: str) -> Future | None:
        """The prefetched answer of `name` for the job, once (None: ask the server)."""
        with self._prefetched_lock:
            futures = self._prefetched.get(job.id)
            return futures.pop(name, None) if futures else None

    def _forget_prefetched(self, job: ClaimedJob) -> None:
        with self._prefetched_lock:
            self._prefetched.pop(job.id, None)

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code == 401:
            raise RunnerTokenRefused(f"{what}: the runner token was refused")
        if response.status_code >= 400:
            raise RunnerApiError(f"{what} refused ({response.status_code}): {_detail(response)}")

    def claim(self) -> ClaimedJob | None:
        if self._pending is not None:
            job, self._pending = self._pending, None
            return job
        response = self.client.post("jobs/request", {"wait": 0})
        return self._claimed(response)

    def _claimed(self, response: requests.Response) -> ClaimedJob | None:
        if response.status_code == 204:
            return None
        self._check(response, "claim")
        data = response.json()
        lists = data.get("artifact_lists")
        job = _job_from_json(data)
        if isinstance(lists, dict):  # in the claim answer: nothing to ask for
            answers = {
                "dependencies": HttpArtifacts.dependencies_of(lists.get("dependencies") or {}),
                "images": HttpArtifacts.images_of(lists.get("images") or {}),
            }
            self._hold(job, answers)
        else:  # a server that does not send them (an older one)
            self._start_prefetch(job)
        return job

    def wait_for_work(self, timeout: float) -> None:
        # A long-poll: the server answers as soon as a job is queued. A job it hands us
        # here is kept for the next claim() call.
        wait = min(timeout, _LONG_POLL_S)
        response = self.client.post("jobs/request", {"wait": wait}, timeout=(5, wait + 30))
        self._pending = self._claimed(response)

    def heartbeat(self, job: ClaimedJob) -> bool:
        response = self.client.post(f"jobs/{job.id}/heartbeat")
        if response.status_code == 409:
            return False
        self._check(response, "heartbeat")
        return True

    def _job_call(self, job: ClaimedJob, path: str, body: dict[str, Any], what: str) -> requests.Response | None:
        response = self.client.post(path, body)
        if response.status_code == 409 and response.json().get("code") == "job_not_held":
            # Cancelled or taken away: nothing to report, and the job is stopped.
            logger.info("%s ignored: %s", what, _detail(response))
            self._lost(job)
            return None
        return response

    def _lost(self, job: ClaimedJob) -> None:
        if self.on_job_lost is not None:
            self.on_job_lost(job.id)

    def step_started(self, job: ClaimedJob, step: ClaimedStep) -> None:
        response = self._job_call(job, f"jobs/{job.id}/steps/{step.id}/start", {}, "step start")
        if response is not None:
            self._check(response, "step start")

    def step_log(self, job: ClaimedJob, step: ClaimedStep, offset: int, text: str) -> int | None:
        """Ship a chunk with the job's own token (it can do nothing but report on this job).
        Returns the offset the server expects next: the chunk's end, or on a gap or overlap
        (409 log_gap) the offset LogStream resends from. None once the job is no longer ours."""
        response = self.client.post(
            f"jobs/{job.id}/steps/{step.id}/log", {"offset": offset, "content": text}, token=job.job_token or None
        )
        if response.status_code == 409:
            body = response.json()
            if body.get("code") == "log_gap":
                logger.info("log chunk at %s out of order; the server expects %s", offset, body["expected_offset"])
                return int(body["expected_offset"])
            logger.info("log chunk ignored: %s", _detail(response))
            if body.get("code") == "job_not_held":
                self._lost(job)
            return None
        self._check(response, "log chunk")
        return int(response.json()["next_offset"])

    def step_finished(self, job: ClaimedJob, step: ClaimedStep, *, status: str, exit_code: int | None) -> None:
        self._step_end(job, StepEnd(step_id=step.id, status=status, exit_code=exit_code))

    def _step_end(self, job: ClaimedJob, end: StepEnd) -> None:
        body = {"status": end.status, "exit_code": end.exit_code}
        response = self._job_call(job, f"jobs/{job.id}/steps/{end.step_id}/finish", body, "step finish")
        if response is not None:
            self._check(response, "step finish")

    def complete(self, job: ClaimedJob, result: JobResult) -> None:
        self._forget_prefetched(job)
        body = {"status": result.status, "exit_code": result.exit_code, "reason": result.reason}
        if job.finish_takes_step_ends:
            body["steps"] = [
                {"id": end.step_id, "status": end.status, "exit_code": end.exit_code} for end in result.step_ends
            ]
        else:  # an older server: each on its own first
            for end in result.step_ends:
                self._step_end(job, end)
        response = self._job_call(job, f"jobs/{job.id}/finish", body, "finish")
        if response is not None:
            self._check(response, "finish")

    def release(self, job: ClaimedJob, reason: str) -> None:
        self._forget_prefetched(job)
        response = self._job_call(job, f"jobs/{job.id}/release", {"reason": reason}, "release")
        if response is not None:
            self._check(response, "release")

    def close_thread(self) -> None:
        self.client.close()


class _Prefetched(HttpArtifacts):
    """HttpArtifacts that answers the artifact lists from the prefetch, when it has them. A
    prefetch that failed (the server away, the job taken away) is asked again here, with the
    caller's retries and errors, as if there had been none."""

    def __init__(self, client: RunnerApiClient, backend: HttpBackend):
        super().__init__(client)
        self.backend = backend

    def _take(self, job: ClaimedJob, name: str) -> Any:
        future = self.backend.take_prefetched(job, name)
        if future is None:
            return None
        try:
            return future.result()
        except Exception as exc:
            logger.info("prefetched %s of job %s failed (%s); asking again", name, job.id, exc)
            return None

    def dependencies(self, job):
        found = self._take(job, "dependencies")
        return found if found is not None else super().dependencies(job)

    def images(self, job):
        found = self._take(job, "images")
        return found if found is not None else super().images(job)
