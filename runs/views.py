"""Server-rendered pages of the runs app: the dashboard landing page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from runs.models import PipelineRun

DASHBOARD_RUNS = 25


@login_required
def home(request: HttpRequest) -> HttpResponse:
    # One query whatever the number of runs: the pipeline and repository come along in the join.
    runs = PipelineRun.objects.select_related("pipeline__repository").order_by("-created_at")[:DASHBOARD_RUNS]
    return render(request, "dashboard/home.html", {"runs": runs, "limit": DASHBOARD_RUNS})
