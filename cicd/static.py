"""Static files served by Django itself, for `make run` where nothing sits in front of uvicorn.

django.views.static.serve answers with a FileResponse, whose synchronous file iterator makes
the ASGI handler warn on every file. Collected static files are small (the admin's largest is
a few hundred KB), so they are sent as one buffered response instead.
"""

from __future__ import annotations

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse
from django.views.static import serve


def serve_collected(request: HttpRequest, path: str) -> HttpResponse:
    response = serve(request, path, document_root=settings.STATIC_ROOT)
    if not isinstance(response, FileResponse):
        return response  # 304 Not Modified
    buffered = HttpResponse(b"".join(response.streaming_content), status=response.status_code)
    for header in ("Content-Type", "Content-Length", "Last-Modified", "Content-Encoding"):
        if header in response:
            buffered[header] = response[header]
    response.close()
    return buffered
