"""Live events for log viewers, over the channel layer (Redis Pub/Sub).

Group names: Channels allows only ASCII letters, digits, ``-``, ``_`` and ``.`` in them, so the
design's ``step:{step_id}`` is ``step.<uuid>`` here, and a run's status channel ``run.<uuid>``.

Publishing never raises: a chunk is in the database before it is published, and a viewer
that missed an event (Redis down, a slow subscription) fetches the gap from the database.
Events are sent from one event loop per process, running in a daemon thread, so that sync
code (views under WSGI, the trusted runner, Celery) reuses one Redis connection instead of
opening one per chunk, and a hung Redis costs at most CONVEYOR_LOG_PUBLISH_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)

# Event types, as consumers see them (Channels maps "log.chunk" to the handler log_chunk).
LOG_CHUNK = "log.chunk"
LOG_SYNC = "log.sync"
RUN_STATUS = "run.status"
STEP_STATUS = "step.status"
# A run of any repository changed (the runs list's viewers; runs.live, runs.consumers).
RUNS_CHANGED = "runs.changed"


def log_message(*, offset: int, end: int, content: str, kind: str, at: str | None) -> dict[str, Any]:
    """A piece of log as the browser gets it (see logs.consumers)."""
    return {"type": "log", "offset": offset, "end": end, "content": content, "kind": kind, "at": at}


def log_frame(**fields: Any) -> str:
    """The same, as the WebSocket text frame: encoded once when published, not once per viewer."""
    return json.dumps(log_message(**fields))


def step_group(step_id: Any) -> str:
    return f"step.{step_id}"


def run_group(run_id: Any) -> str:
    return f"run.{run_id}"


def runs_group() -> str:
    """Every run's changes, for the runs list: its viewers keep what they may see."""
    return "runs"


class _PublisherLoop:
    """An event loop in a daemon thread, one per process (re-created after a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="log-publisher", daemon=True)
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_publisher = _PublisherLoop()


def publish(group: str, message: dict[str, Any]) -> bool:
    """Send `message` to every viewer in `group`. Returns False (and logs why) if it could not."""
    layer = get_channel_layer()
    if layer is None:
        return False
    future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), _publisher.loop())
    try:
        future.result(timeout=settings.CONVEYOR_LOG_PUBLISH_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        future.cancel()
        logger.warning("publishing %s to %s timed out; viewers catch up from the database", message["type"], group)
        return False
    except Exception as exc:  # Redis down or refusing: the data is stored, viewers recover
        logger.warning("publishing %s to %s failed: %s", message["type"], group, exc)
        return False
    return True
