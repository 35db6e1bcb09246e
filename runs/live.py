"""Live events of runs for the dashboard's runs list: after a run changed (and its transaction
committed), one event with the list's row goes to the `runs` group (logs.events.runs_group);
each viewer's socket (runs.consumers.RunsListConsumer) keeps the runs of repositories its user
may see. The run page's own events (RUN_STATUS, STEP_STATUS to the run's group) are sent by
logs.services."""

from __future__ import annotations

from typing import Any

from logs import events
from runs.page_selectors import run_list_row


def runs_list_publish(*, run_id: Any) -> bool:
    """Tell the runs list's viewers that the run changed. Call it after commit (the row read
    here is what viewers get). Never raises for a channel layer that is away (logs.events)."""
    row = run_list_row(run_id=run_id)
    if row is None:
        return False
    return events.publish(events.runs_group(), {"type": events.RUNS_CHANGED, "run": row})
