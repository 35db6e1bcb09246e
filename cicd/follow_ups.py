"""What follows a committed change without being part of it: events to live viewers, commit
statuses, notifications, deployments. They run after commit (a rolled-back change announces
nothing); inside `follow_ups_collected()` they are handed to the caller instead, at commit,
for it to run once it has answered its client: the views served in a pool (cicd.pooled, the
runner API's reports among them) answer first, so a runner goes on without waiting for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import partial

from django.db import transaction

Work = Callable[[], None]

# Set by follow_ups_collected: where follow-ups go instead of running at commit.
_collected: ContextVar[list[Work] | None] = ContextVar("_collected_follow_ups", default=None)


def follow_up_after_commit(work: Work) -> None:
    """Run `work` after the current transaction commits (at once outside one), or hand it to
    the caller collecting follow-ups."""
    collected = _collected.get()
    transaction.on_commit(work if collected is None else partial(collected.append, work))


@contextlib.contextmanager
def follow_ups_collected() -> Iterator[list[Work]]:
    """Within the block, follow-ups are not run at commit but put, at commit, in the yielded
    list. A rolled-back change still puts nothing there. The caller must run every one."""
    collected: list[Work] = []
    token = _collected.set(collected)
    try:
        yield collected
    finally:
        _collected.reset(token)
