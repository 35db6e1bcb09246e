"""The live log WebSocket: ``/ws/steps/<step id>/?offset=N``.

Order of work on connect, which is what makes it gap-free: (1) subscribe to the step's group
and its run's group, (2) load the history past N from the database and send it, (3) forward
live chunks that end past what was sent. Chunks are committed before they are published, so
anything published before the subscription took effect is in the database by the time the
history is read; live chunks already covered by the history are dropped, and one that starts
past what was sent (an event lost while Redis was away) makes the consumer read the gap from
the database first. Redis SUBSCRIBE is not acknowledged to the caller, so after the history
the consumer sends a marker through the step's own group; when it comes back the
subscription is certainly active, and the database is read once more for anything committed
in between. Finally a backstop: a viewer that has heard nothing for
CONVEYOR_LOG_VIEWER_BACKSTOP_S re-reads the database (chunks and the step's status), so a
subscription lost with a Redis restart, or the very last event of a step, never leaves it
stale for longer than that.

Messages to the browser (JSON):
  {"type": "log", "offset": o, "end": e, "content": "...", "kind": "OUTPUT", "at": iso}
      a piece of the log covering bytes [o, e); reconnect with ?offset=<last end>
  {"type": "status", "run": {...}, "job": {...}, "step": {...}}   the current statuses
  {"type": "ready", "offset": e, "live": true}   the history is sent; live chunks follow
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from logs import events
from logs.models import LogChunkKind
from logs.selectors import log_chunks_from, step_for_viewer, step_status_snapshot, text_from_byte
from runs.models import StepStatus

logger = logging.getLogger(__name__)

# Close codes (4000-4999 are the application's): the handshake of a refused viewer is rejected
# before it is accepted (HTTP 403), whether the step does not exist or is not theirs to see.
CLOSE_TRY_AGAIN = 1013  # Redis is away: the client reconnects with ?offset= later
HISTORY_BATCH = 64  # chunks per database read (64 KB each at most, normally)


def _offset_from(query_string: bytes) -> int:
    values = parse_qs(query_string.decode("latin-1")).get("offset") or ["0"]
    try:
        return max(0, int(values[0]))
    except ValueError:
        return 0


class ViewerConsumer(AsyncJsonWebsocketConsumer):
    """A live viewer: it listens to the channel-layer groups in `self.joined` and ignores what
    the browser sends. Its channel-layer events are handled one at a time under `self.lock`;
    `start_backstop(catch_up)` starts a task that, whenever the layer has been quiet for
    CONVEYOR_LOG_VIEWER_BACKSTOP_S, catches up from the database (`catch_up`, under the lock):
    an event lost while Redis was away costs a viewer that long at most."""

    lock: asyncio.Lock

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type", "").startswith(("log.", "run.", "step.")):
            self._heard()
            async with self.lock:
                await super().dispatch(message)
        else:
            await super().dispatch(message)

    def _heard(self) -> None:
        self.heard_at = asyncio.get_running_loop().time()

    def start_backstop(self, catch_up: Callable[[], Awaitable[None]]) -> None:
        self._heard()
        self.backstop = asyncio.ensure_future(self._backstop(catch_up))

    async def _backstop(self, catch_up: Callable[[], Awaitable[None]]) -> None:
        interval = settings.CONVEYOR_LOG_VIEWER_BACKSTOP_S
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(interval)
                if loop.time() - self.heard_at >= interval:
                    async with self.lock:
                        await catch_up()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away under us: nothing left to do
            logger.debug("viewer backstop of %s ended: %s", self.channel_name, exc)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "backstop", None) is not None:
            self.backstop.cancel()
        for group in getattr(self, "joined", []):
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # Redis away: the subscription dies with the connection anyway
                logger.debug("group_discard %s failed: %s", group, exc)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Viewers only listen; anything they send is ignored."""


class StepLogConsumer(ViewerConsumer):
    async def connect(self) -> None:
        step = await database_sync_to_async(step_for_viewer)(
            user=self.scope.get("user"), step_id=self.scope["url_route"]["kwargs"]["step_id"]
        )
        if step is None:
            await self.close()
            return
        self.step_id, self.job_id, self.run_id = str(step.pk), str(step.job_id), str(step.job.run_id)
        self.cursor = _offset_from(self.scope.get("query_string", b""))
        self.nonce = uuid.uuid4().hex
        self.joined: list[str] = []
        self.status: dict[str, Any] | None = None
        # Channel-layer handlers run one at a time; the backstop task takes this lock too.
        self.lock = asyncio.Lock()
        await self.accept()
        live = await self._join(events.step_group(self.step_id), events.run_group(self.run_id))
        await self._send_from_database()
        await self._send_status(await database_sync_to_async(step_status_snapshot)(step_id=self.step_id))
        if live:
            live = await self._group_send(
                events.step_group(self.step_id), {"type": events.LOG_SYNC, "nonce": self.nonce}
            )
        await self.send_json({"type": "ready", "offset": self.cursor, "live": live})
        if not live:
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        self.start_backstop(self._catch_up)

    # --- Channel layer events.

    async def log_chunk(self, event: dict[str, Any]) -> None:
        if event["end"] <= self.cursor:
            return  # already sent (from the history, or a duplicate)
        if event["offset"] > self.cursor:
            # An event went missing before this one: the database has both.
            await self._send_from_database()
            if event["end"] <= self.cursor:
                return
        if event["offset"] == self.cursor:
            # The common case: the frame as published, encoded once for all viewers.
            await self.send(text_data=event["frame"])
            self.cursor = event["end"]
            return
        # The history already went into this chunk: send only the rest of it.
        chunk = json.loads(event["frame"])
        if chunk["kind"] != LogChunkKind.OUTPUT:
            return
        content = text_from_byte(chunk["content"], self.cursor - chunk["offset"])
        await self._send_chunk({**chunk, "offset": self.cursor, "content": content})

    async def log_sync(self, event: dict[str, Any]) -> None:
        if event.get("nonce") == self.nonce:
            await self._send_from_database()

    async def step_status(self, event: dict[str, Any]) -> None:
        if event["step"]["id"] != self.step_id:
            return
        if event["step"]["status"] in StepStatus.TERMINAL:
            await self._send_from_database()  # the last chunks before the status, if any went missing
        await self._send_status(event)

    async def run_status(self, event: dict[str, Any]) -> None:
        job = next((j for j in event.get("jobs", []) if j["id"] == self.job_id), None)
        await self.send_json({"type": "status", "run": event["run"], **({"job": job} if job else {})})

    # --- Helpers.

    async def _catch_up(self) -> None:
        await self._send_from_database()
        snapshot = await database_sync_to_async(step_status_snapshot)(step_id=self.step_id)
        if snapshot is not None and snapshot != self.status:
            if snapshot["step"]["status"] in StepStatus.TERMINAL:
                await self._send_from_database()
            await self._send_status(snapshot)

    async def _join(self, *groups: str) -> bool:
        try:
            for group in groups:
                await self.channel_layer.group_add(group, self.channel_name)
                self.joined.append(group)
        except Exception as exc:
            logger.warning("live log of step %s unavailable (channel layer: %s)", self.step_id, exc)
            return False
        return True

    async def _group_send(self, group: str, message: dict[str, Any]) -> bool:
        try:
            await self.channel_layer.group_send(group, message)
        except Exception as exc:
            logger.warning("channel layer unavailable for step %s: %s", self.step_id, exc)
            return False
        return True

    async def _send_from_database(self) -> None:
        while True:
            chunks = await database_sync_to_async(log_chunks_from)(
                step_id=self.step_id, offset=self.cursor, limit=HISTORY_BATCH
            )
            for chunk in chunks:
                await self._send_chunk(chunk)
            if len(chunks) < HISTORY_BATCH:
                return

    async def _send_chunk(self, chunk: dict[str, Any]) -> None:
        await self.send(
            text_data=events.log_frame(
                offset=chunk["offset"],
                end=chunk["end"],
                content=chunk["content"],
                kind=chunk["kind"],
                at=chunk.get("at"),
            )
        )
        self.cursor = chunk["end"]

    async def _send_status(self, snapshot: dict[str, Any] | None) -> None:
        if snapshot is not None:
            self.status = {k: snapshot[k] for k in ("run", "job", "step")}
            await self.send_json(
                {"type": "status", "run": snapshot["run"], "job": snapshot["job"], "step": snapshot["step"]}
            )
