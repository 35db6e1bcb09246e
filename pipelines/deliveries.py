"""Webhook deliveries: receive (authenticate, store, answer) and process (fetch, create runs).

Receiving is all the HTTP request does: find the repository, check the signature, read the
event, store the delivery, answer. A Celery task sent after commit (`process_delivery`)
does the slow part: fetch the repository into its mirror, read the config at the commit
and create the run, once per pipeline that takes the event. A delivery is keyed by
(provider, delivery id), so a redelivery finds the first one and creates nothing.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from cicd.db import prepared_cursor
from pipelines import selectors, services, webhooks
from pipelines.models import (
    DeliveryStatus,
    Pipeline,
    Repository,
    Trigger,
    WebhookDelivery,
    WebhookProvider,
)
from pipelines.webhooks import EventKind, WebhookError, WebhookEvent

logger = logging.getLogger(__name__)

# A delivery PROCESSING for longer than this lost its worker (killed mid-task): it may be taken again.
PROCESSING_STALE_AFTER = timedelta(minutes=15)
# A QUEUED delivery older than this lost its task (the broker was down at commit): sent again.
QUEUED_STALE_AFTER = timedelta(minutes=2)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def clean_text(value: str, limit: int) -> str:
    """Fit for a text column: no NUL (PostgreSQL refuses it), no lone surrogates, bounded."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")[:limit]


# --- Receiving.


def _find_repository(request: webhooks.Request, payload_loader: Any) -> tuple[Repository, dict[str, Any]]:
    """The repository the request is for, authenticated by its signature, and the payload.

    With ?repository=<name> the signature is checked before the body is parsed. Without it,
    the payload names the repository (owner/name or clone URL; the generic format's
    "repository"); when several repositories match, the one whose secret signed it wins.
    """
    if request.query_repository:
        repository = _repository_named(request.query_repository)
        if repository is None:
            raise WebhookError(404, f"no repository named {request.query_repository!r}")
        webhooks.verify_signature(
            request.provider, secret=repository.webhook_secret, headers=request.headers, body=request.body
        )
        return repository, payload_loader()
    payload = payload_loader()
    if request.provider == WebhookProvider.GENERIC:
        name = payload.get("repository")
        if not isinstance(name, str) or not name:
            raise webhooks.bad_request("say which repository: ?repository=<name> or a 'repository' field")
        found = _repository_named(clean_text(name, 200))
        candidates = [found] if found is not None else []
        if not candidates:
            raise WebhookError(404, f"no repository named {name[:200]!r}")
    else:
        where = webhooks.repository_keys(request.provider, payload)
        candidates = selectors.repositories_for_payload(paths=where["repository_paths"], urls=where["repository_urls"])
        if not candidates:
            named = ", ".join(where["repository_paths"] or where["repository_urls"][:1]) or "nothing"
            raise WebhookError(
                404,
                f"no repository matches the payload ({named[:200]}): set the repository's forge project "
                "or clone URL, or add ?repository=<name> to the webhook URL",
            )
    failure: WebhookError | None = None
    for repository in candidates:
        try:
            webhooks.verify_signature(
                request.provider, secret=repository.webhook_secret, headers=request.headers, body=request.body
            )
        except WebhookError as exc:
            failure = exc
            continue
        return repository, payload
    assert failure is not None
    raise failure


# What a delivery needs of its repository; its other fields are deferred (loaded if read).
_REPOSITORY_FIELDS = ("id", "name", "webhook_secret")


def _repository_named(name: str) -> Repository | None:
    # The ORM's query for this one row, even raw()'s (every column through the model's
    # converters), was a fifth of a webhook request's CPU (py-spy, under a burst): here it is
    # one prepared statement of three columns. `name` is unique.
    opts = Repository._meta
    fields = [opts.get_field(field_name) for field_name in _REPOSITORY_FIELDS]
    with prepared_cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(f.column for f in fields)} FROM {opts.db_table} WHERE name = %s",  # noqa: S608
            [name],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    # The secret is decrypted as the ORM reads it (EncryptedTextField.from_db_value).
    values = [
        f.from_db_value(value, None, connection) if hasattr(f, "from_db_value") else value
        for f, value in zip(fields, row, strict=True)
    ]
    return Repository.from_db(connection.alias, [f.attname for f in fields], values)


def webhook_receive(*, request: webhooks.Request) -> Answer:
    """Authenticate and store a webhook delivery; queue its processing after commit.

    Raises WebhookError (400, 401, 404) for a request that cannot be accepted: then nothing
    is stored (503 for a redelivery whose first delivery vanished meanwhile: try again).
    Ignored events (pings, closed pull requests, deleted branches, other events) are stored
    too, as IGNORED, so the admin shows everything a forge sent.
    """
    repository, payload = _find_repository(request, lambda: webhooks.decode_payload(request.body, request.content_type))
    event_name = webhooks.event_name(request.provider, request.headers)
    event = webhooks.parse_event(request.provider, event_name, payload)
    delivery_id = webhooks.delivery_id_from(request.provider, request.headers) or webhooks.body_delivery_id(
        repository.pk, request.body
    )

    status = DeliveryStatus.QUEUED if event.runs else DeliveryStatus.IGNORED
    delivery = WebhookDelivery(
        provider=request.provider,
        delivery_id=clean_text(delivery_id, 255),
        repository=repository,
        event=clean_text(event_name or event.event, 100),
        action=clean_text(event.action, 64),
        ref=clean_text(event.ref, 255),
        commit_sha=event.sha,
        body=request.body.decode("utf-8"),
        content_type=clean_text(request.content_type, 200),
        headers={name: clean_text(value, 500) for name, value in request.kept_headers.items()},
        status=status,
        result=clean_text(event.reason, 1000) if not event.runs else "",
        processed_at=None if event.runs else timezone.now(),
    )
    if not _insert_unless_delivered(delivery):
        existing = WebhookDelivery.objects.filter(provider=delivery.provider, delivery_id=delivery.delivery_id).first()
        if existing is None:
            # Stored by another request a moment ago and deleted since: nothing to answer with.
            raise WebhookError(503, "the delivery changed while it was stored; deliver the event again later")
        return _redelivery(existing)
    if event.runs:
        # Sent by this process's task sender once the answer is on its way (the INSERT has
        # committed already: on_commit runs at once, unless a caller's transaction holds it).
        transaction.on_commit(partial(task_sender.send, delivery.pk), robust=True)
    if event.kind == EventKind.PING:
        return Answer(200, {"status": "pong", "delivery": delivery.pk, "repository": repository.name})
    if not event.runs:
        return Answer(202, {"status": "ignored", "reason": event.reason, "delivery": delivery.pk})
    return Answer(
        202,
        {
            "status": "queued",
            "delivery": delivery.pk,
            "repository": repository.name,
            "ref": event.ref,
            "sha": event.sha,
        },
    )


def _insert_unless_delivered(delivery: WebhookDelivery) -> bool:
    """INSERT the delivery unless its (provider, delivery id) is stored already; True if stored.

    One statement, atomic on its own: a redelivery, or the same delivery arriving twice at
    once, is an empty RETURNING instead of an error, so no transaction or savepoint is
    needed around it, and no SELECT before it (every round trip counts in a burst).
    """
    opts = WebhookDelivery._meta
    fields = [f for f in opts.concrete_fields if not f.primary_key]
    values = [f.get_db_prep_save(f.pre_save(delivery, add=True), connection) for f in fields]
    # Prepared: PostgreSQL parses and plans it once per connection, and the parameters are
    # sent as they are, not quoted into the statement's text in Python.
    with prepared_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {opts.db_table} ({', '.join(f.column for f in fields)}) "  # noqa: S608 (our table)
            f"VALUES ({', '.join(['%s'] * len(fields))}) "
            f"ON CONFLICT ON CONSTRAINT delivery_unique_id_per_provider DO NOTHING RETURNING {opts.pk.column}",
            values,
        )
        row = cursor.fetchone()
    if row is None:
        return False
    delivery.pk = row[0]
    delivery._state.adding = False
    delivery._state.db = connection.alias
    return True


def _redelivery(delivery: WebhookDelivery) -> Answer:
    body: dict[str, Any] = {"status": "duplicate", "delivery": delivery.pk, "delivery_status": delivery.status}
    # A delivery that failed (an unreachable repository, say) is tried again: its runs were
    # never created, and processing is idempotent anyway.
    if delivery.status == DeliveryStatus.FAILED and delivery_replay(delivery=delivery):
        body["status"] = "requeued"
        body["delivery_status"] = DeliveryStatus.QUEUED
    return Answer(200, body)


def _send_after_commit(delivery_id: int) -> None:
    from pipelines.tasks import process_delivery

    # robust: a broker that is down must not turn the answer into a 500; the delivery stays
    # QUEUED and deliveries_resend_stuck sends it again.
    transaction.on_commit(partial(process_delivery.delay, delivery_id), robust=True)


# Deliveries of a burst per processing task (process_deliveries): fewer tasks to send, while a
# burst is still spread over the workers, and one delivery's run waits for at most this many.
DELIVERIES_PER_TASK = 8
# How long the task sender waits for the rest of a burst after its first delivery
# (TaskSender._next_batch): a delivery's run may be created that much later.
SEND_WAIT = 0.02


class TaskSender:
    """Sends the processing tasks of webhook deliveries from a thread of this process, so that
    a webhook answer does not wait for the broker; the deliveries of a burst go several to a
    task (process_deliveries) and their tasks in one pipelined round trip.

    Nothing is lost if the process dies with tasks unsent: their deliveries stay QUEUED and
    deliveries_resend_stuck sends them again. At a normal exit the rest is sent first.
    `broker`: a Celery app whose broker connection to send through (tests: a broker of their
    own); by default the project's.
    """

    def __init__(self, *, broker: Any = None) -> None:
        self._broker = broker
        self._pending: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._exit_registered = False

    def send(self, delivery_id: int) -> None:
        from pipelines.tasks import process_delivery

        if process_delivery.app.conf.task_always_eager:
            # No broker to wait for: the task runs here and now, as .delay() runs it.
            process_delivery.delay(delivery_id)
            return
        self._start()
        self._pending.put(delivery_id)

    def _start(self) -> None:
        # Not alive after a fork either: the child starts its own thread.
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="delivery-task-sender", daemon=True)
                self._thread.start()
                if not self._exit_registered:
                    atexit.register(self.close)
                    self._exit_registered = True

    def close(self, timeout: float = 10.0) -> None:
        """Send what is pending and stop the thread (at exit; a later send starts it again)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._pending.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            self._publish([delivery_id for delivery_id in batch if delivery_id is not None])
            if None in batch:
                return

    def _next_batch(self) -> list[int | None]:
        """The next deliveries to send: the first to come and those that come within
        SEND_WAIT after it (None, the stop, ends it).

        A burst's deliveries commit one by one, a millisecond or two apart: taken as they
        came, they went out about two to a task (bench: webhook), and sending a task costs
        the web process about as much as answering a delivery. Sleeping rather than waiting
        on the queue for each: a waiting thread is woken (and wants the GIL) at every put."""
        batch = [self._pending.get()]
        if batch[0] is not None:
            time.sleep(SEND_WAIT)
        while batch[-1] is not None:
            try:
                batch.append(self._pending.get_nowait())
            except queue.Empty:
                break
        return batch

    def _publish(self, delivery_ids: list[int]) -> None:
        from pipelines.tasks import process_deliveries

        if not delivery_ids:
            return
        broker = self._broker or process_deliveries.app
        try:
            # One producer and one pipelined round trip to the broker for the whole batch, and
            # one task per DELIVERIES_PER_TASK deliveries: sending a Celery task cost the web
            # process about as much CPU as answering the request (bench/README.md, webhook).
            with broker.producer_or_acquire() as producer, producer.batch():
                for start in range(0, len(delivery_ids), DELIVERIES_PER_TASK):
                    process_deliveries.apply_async(
                        (delivery_ids[start : start + DELIVERIES_PER_TASK],), producer=producer
                    )
        except Exception:
            # A broker that is down: the deliveries stay QUEUED; deliveries_resend_stuck sends them.
            logger.exception("webhook deliveries %s: processing task not sent; the sweep will resend", delivery_ids)


task_sender = TaskSender()


@transaction.atomic
def delivery_replay(*, delivery: WebhookDelivery) -> bool:
    """Process a delivery again (admin "replay", a redelivery of a failed one). Runs that
    already exist for its commit are linked, not created twice. False if it is being
    processed right now."""
    if delivery.status in DeliveryStatus.PENDING:
        return False
    updated = WebhookDelivery.objects.filter(pk=delivery.pk, status=delivery.status).update(
        status=DeliveryStatus.QUEUED, error_message="", started_at=None, processed_at=None
    )
    if updated != 1:
        return False
    delivery.status = DeliveryStatus.QUEUED
    _send_after_commit(delivery.pk)
    return True


def deliveries_resend_stuck(*, now: datetime | None = None) -> int:
    """Send the task again for deliveries whose task was lost (QUEUED too long) or whose
    worker died (PROCESSING too long). Safe to run twice at once: processing claims first."""
    from pipelines.tasks import process_delivery

    now = now or timezone.now()
    # Served by the partial index delivery_pending_idx.
    stuck = list(
        WebhookDelivery.objects.filter(
            Q(status=DeliveryStatus.QUEUED, received_at__lt=now - QUEUED_STALE_AFTER)
            | Q(status=DeliveryStatus.PROCESSING, started_at__lt=now - PROCESSING_STALE_AFTER)
        )
        .order_by("received_at")
        .values_list("pk", flat=True)[:500]
    )
    for pk in stuck:
        process_delivery.delay(pk)
    return len(stuck)


def deliveries_prune(*, now: datetime | None = None) -> int:
    """Delete processed deliveries older than CONVEYOR_WEBHOOK_RETENTION_DAYS."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.CONVEYOR_WEBHOOK_RETENTION_DAYS)
    deleted, _ = (
        WebhookDelivery.objects.filter(received_at__lt=cutoff, status__in=sorted(DeliveryStatus.TERMINAL))
        .order_by()
        .delete()
    )
    return deleted


# --- Processing.


@dataclass
class _Outcome:
    status: str
    result: str
    error: str = ""
    runs: list[Any] = field(default_factory=list)


def _claim(delivery_id: int, *, now: datetime, takeover: bool = False) -> WebhookDelivery | None:
    """QUEUED -> PROCESSING (or a stale PROCESSING taken over), guarded: one worker wins.

    `takeover`: the task was handed out again because the worker running it died, so the
    delivery's PROCESSING is that dead worker's and is taken over at once. Compared on the
    `started_at` read here, so that two such copies cannot both take it."""
    claimable = Q(status=DeliveryStatus.QUEUED) | Q(
        status=DeliveryStatus.PROCESSING, started_at__lt=now - PROCESSING_STALE_AFTER
    )
    if takeover:
        started_at = (
            WebhookDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PROCESSING)
            .values_list("started_at", flat=True)
            .first()
        )
        if started_at is not None:
            claimable |= Q(status=DeliveryStatus.PROCESSING, started_at=started_at)
    updated = WebhookDelivery.objects.filter(claimable, pk=delivery_id).update(
        status=DeliveryStatus.PROCESSING, started_at=now, attempts=F("attempts") + 1
    )
    if updated != 1:
        return None
    return WebhookDelivery.objects.select_related("repository").get(pk=delivery_id)


def _finish(delivery: WebhookDelivery, outcome: _Outcome) -> None:
    with transaction.atomic():
        updated = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=DeliveryStatus.PROCESSING, started_at=delivery.started_at
        ).update(
            status=outcome.status,
            result=clean_text(outcome.result, 1000),
            error_message=clean_text(outcome.error, 10_000),
            processed_at=timezone.now(),
        )
        if updated == 1 and outcome.runs:
            delivery.runs.add(*outcome.runs)
    delivery.status = outcome.status


def delivery_process(*, delivery_id: int, takeover: bool = False) -> WebhookDelivery | None:
    """Create the runs of a stored delivery. Returns None if another worker has it or it was
    processed already (a task delivered twice). Never raises for a bad delivery: the outcome
    is stored on it (FAILED with the reason)."""
    delivery = _claim(delivery_id, now=timezone.now(), takeover=takeover)
    if delivery is None:
        return None
    try:
        outcome = _process(delivery)
    except Exception as exc:  # a bug must not leave the delivery PROCESSING for good
        logger.exception("webhook delivery %s: processing failed", delivery.pk)
        outcome = _Outcome(DeliveryStatus.FAILED, "internal error", f"{type(exc).__name__}: {exc}")
    _finish(delivery, outcome)
    return delivery


def _process(delivery: WebhookDelivery) -> _Outcome:
    try:
        payload = webhooks.decode_payload(delivery.body.encode("utf-8"), delivery.content_type)
        event = webhooks.parse_event(delivery.provider, delivery.event, payload)
    except WebhookError as exc:
        return _Outcome(DeliveryStatus.FAILED, "unreadable payload", exc.message)
    if not event.runs:
        return _Outcome(DeliveryStatus.IGNORED, event.reason)
    trigger = Trigger.PR if event.kind == EventKind.PULL_REQUEST else Trigger.PUSH
    pipelines = selectors.pipelines_for_event(repository=delivery.repository, trigger=trigger)
    if not pipelines:
        what = "pull request" if trigger == Trigger.PR else "push"
        return _Outcome(
            DeliveryStatus.SKIPPED, f"no active pipeline of {delivery.repository.name} runs for {what} events"
        )
    results = [_run_pipeline(pipeline, event, trigger=trigger, delivery=delivery) for pipeline in pipelines]
    runs = [r.run for r in results if r.run is not None]
    errors = [r.message for r in results if r.failed]
    summary = "; ".join(r.message for r in results)
    if errors and not runs:
        return _Outcome(DeliveryStatus.FAILED, summary, "\n".join(errors))
    if not runs:
        return _Outcome(DeliveryStatus.SKIPPED, summary)
    return _Outcome(DeliveryStatus.DONE, summary, "\n".join(errors), runs)


def _run_pipeline(
    pipeline: Pipeline, event: WebhookEvent, *, trigger: str, delivery: WebhookDelivery
) -> services.EventRun:
    from pipelines.commit_status import commit_status_enqueue

    pr = event.pull_request
    # One canonical run per commit and branch: a branch push and its pull request share it,
    # unless the pipeline asks for separate pull request runs.
    dedupe = (trigger,) if pipeline.separate_pr_runs else (Trigger.PUSH, Trigger.PR)
    try:
        result = services.run_trigger_once(
            pipeline=pipeline,
            ref=event.ref,
            commit_sha=event.sha,
            is_tag=event.kind == EventKind.TAG,
            trigger=trigger,
            triggered_by=clean_text(event.actor, 255),
            ci_variables=event.ci_variables(),
            extra_refs=(pr.head_ref,) if pr is not None and pr.head_ref else (),
            dedupe_triggers=dedupe,
        )
    except services.RunNotCreated as exc:
        return services.EventRun(run=None, created=False, message=f"{pipeline.name}: no run ({exc})")
    except services.TriggerError as exc:
        return services.EventRun(run=None, created=False, message=f"{pipeline.name}: {exc}", failed=True)
    if result.created and result.run is not None:
        services.runs_cancel_superseded(run=result.run, event_time=delivery.received_at)
        commit_status_enqueue(run_id=result.run.pk)
    return result
