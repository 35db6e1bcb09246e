"""The dashboard's live statuses over WebSockets.

``/ws/runs/<run id>/``: one run's status and its jobs' statuses and durations, for the run
page's graph and job list. Order of work on connect, as for the live log (logs.consumers):
(1) subscribe to the run's group (logs.events.run_group, where logs.services publishes
RUN_STATUS and STEP_STATUS after commit), (2) send the current snapshot, (3) send a fresh
snapshot for every event. Redis SUBSCRIBE is not acknowledged, so after the first snapshot the
consumer sends a marker through the run's group (the log viewers' `log.sync`: they ignore a
nonce that is not theirs); when it comes back the subscription is active, and the snapshot is
read once more for anything committed in between. A viewer that has heard nothing for
CONVEYOR_LOG_VIEWER_BACKSTOP_S re-reads the run (an event lost with a Redis restart).

``/ws/runs/``: the runs list. Every run change goes to one `runs` group (runs.live); each
socket forwards only the runs of repositories its user may see, asking pipelines.permissions
once per repository and again every backstop interval (a revoked role stops the events).

Messages to the browser (JSON):
  {"type": "run", "run": {"id", "status", "duration_s", "finished"}, "jobs": [{"id", "name",
   "status", "duration_s"}]}   the run page: the whole run, as `GET /runs/<id>/status.json`
  {"type": "runs", "run": {"id", "number", "status", "branch", "trigger", "pipeline",
   "repository", "duration_s", "finished"}}   the runs list: one run that changed
  {"type": "ready", "live": true}   the snapshot is sent; changes follow

The runs list's page may ask, once subscribed, for the statuses of the runs it shows (what
changed between its rendering and the subscription): {"type": "snapshot", "ids": [...]}; each
run it may see comes back as a "runs" message with "id", "status" and "duration_s".

Refusals: a run that does not exist or that the user may not see, and the runs list for an
anonymous user, are refused at the handshake with close code 4403 (the browser cannot tell a
missing run from a hidden one). Redis away: the snapshot is sent, then the socket closes with
1013 and the page falls back to polling `status.json`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from logs import events
from logs.consumers import ViewerConsumer
from runs.page_selectors import repository_visible, run_for_viewer, run_live_status_of, run_statuses

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN = 1013  # Redis is away: the page polls instead
MAX_SNAPSHOT_RUNS = 100  # a page of the runs list shows 25


class _LiveConsumer(ViewerConsumer):
    """Joining groups without failing on a Redis that is away; leaving them."""

    joined: list[str]

    async def _join(self, group: str) -> bool:
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except Exception as exc:
            logger.warning("live statuses unavailable (channel layer: %s)", exc)
            return False
        self.joined.append(group)
        return True


class RunStatusConsumer(_LiveConsumer):
    """``/ws/runs/<run id>/``: the run page's live graph and job list."""

    async def connect(self) -> None:
        run = await database_sync_to_async(run_for_viewer)(
            user=self.scope.get("user"), run_id=self.scope["url_route"]["kwargs"]["run_id"]
        )
        if run is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.run_id = str(run.pk)
        self.joined = []
        self.sent: dict[str, Any] | None = None
        self.nonce = uuid.uuid4().hex
        # Channel-layer handlers run one at a time; the backstop task takes this lock too.
        self.lock = asyncio.Lock()
        await self.accept()
        live = await self._join(events.run_group(self.run_id))
        await self._send_snapshot(force=True)
        if live:
            try:
                await self.channel_layer.group_send(
                    events.run_group(self.run_id), {"type": events.LOG_SYNC, "nonce": self.nonce}
                )
            except Exception as exc:
                logger.warning("live statuses of run %s unavailable: %s", self.run_id, exc)
                live = False
        await self.send_json({"type": "ready", "live": live})
        if not live:
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        self.start_backstop(self._catch_up)

    # --- Channel layer events. The events carry statuses but no durations: the snapshot is
    # read again (two small queries), which also makes a lost or reordered event harmless.

    async def run_status(self, event: dict[str, Any]) -> None:
        await self._send_snapshot()

    async def step_status(self, event: dict[str, Any]) -> None:
        await self._send_snapshot()

    async def log_sync(self, event: dict[str, Any]) -> None:
        if event.get("nonce") == self.nonce:
            await self._send_snapshot()

    async def log_chunk(self, event: dict[str, Any]) -> None:
        """Not sent to run groups; ignored should one ever arrive."""

    async def _catch_up(self) -> None:
        await self._send_snapshot()

    async def _send_snapshot(self, *, force: bool = False) -> None:
        snapshot = await database_sync_to_async(run_live_status_of)(run_id=self.run_id)
        if snapshot is None:
            await self.close(code=CLOSE_FORBIDDEN)  # deleted under the viewer
            return
        # Durations grow while jobs run: compare statuses only, the page counts the seconds.
        shape = _statuses(snapshot)
        if not force and self.sent is not None and shape == self.sent:
            return
        self.sent = shape
        await self.send_json({"type": "run", **snapshot})


def _statuses(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": snapshot["run"]["status"],
        "jobs": [(job["id"], job["status"]) for job in snapshot["jobs"]],
    }


class RunsListConsumer(_LiveConsumer):
    """``/ws/runs/``: changes of the runs the user may see, for the runs list."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user = user
        self.joined = []
        # repository id -> may the user see it; forgotten every backstop interval so that a
        # role taken away (or a repository made private) stops the events soon.
        self.visible: dict[Any, bool] = {}
        self.visible_since = asyncio.get_running_loop().time()
        await self.accept()
        live = await self._join(events.runs_group())
        await self.send_json({"type": "ready", "live": live})
        if not live:
            await self.close(code=CLOSE_TRY_AGAIN)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """{"type": "snapshot", "ids": [...]}: the current statuses of these runs (those the user
        may see), for what changed between the page's rendering and the subscription."""
        if not isinstance(content, dict) or content.get("type") != "snapshot":
            return
        ids = content.get("ids")
        if not isinstance(ids, list):
            return
        try:
            run_ids = [uuid.UUID(str(value)) for value in ids[:MAX_SNAPSHOT_RUNS]]
        except ValueError:
            return
        for row in await database_sync_to_async(run_statuses)(user=self.user, run_ids=run_ids):
            await self.send_json({"type": "runs", "run": row})

    async def runs_changed(self, event: dict[str, Any]) -> None:
        run = dict(event["run"])
        repository_id = run.pop("repository_id")
        now = asyncio.get_running_loop().time()
        if now - self.visible_since >= settings.CONVEYOR_LOG_VIEWER_BACKSTOP_S:
            self.visible, self.visible_since = {}, now
        if repository_id not in self.visible:
            self.visible[repository_id] = await database_sync_to_async(repository_visible)(
                user=self.user, repository_id=repository_id
            )
        if self.visible[repository_id]:
            await self.send_json({"type": "runs", "run": run})
