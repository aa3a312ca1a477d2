"""The views: one enqueues a job, one reports on it."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponseNotFound, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .jobs import jobs


@csrf_exempt
@require_POST
def order_report(request: HttpRequest) -> JsonResponse:
    """Enqueue a report for a worker to build; answer at once with its id."""
    job_id = jobs().submit("build-report", json.loads(request.body), priority=2)
    return JsonResponse({"job_id": job_id}, status=202)


@require_GET
def job_status(request: HttpRequest, job_id: str) -> JsonResponse | HttpResponseNotFound:
    """Where the job stands."""
    job = jobs().get_job(job_id)
    if job is None:
        return HttpResponseNotFound()
    return JsonResponse({"status": job.status.value, "result": job.result})
