"""Pagination and error answers of the REST API, named in settings.REST_FRAMEWORK (apart from
cicd.api, whose viewsets DRF's settings would otherwise import while they load)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.views import exception_handler as drf_exception_handler


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class Conflict(exceptions.APIException):
    status_code = 409
    default_detail = "The current state does not allow this."
    default_code = "conflict"


def exception_handler(exc: Exception, context: dict[str, Any]):
    """DRF's handler, plus: a Django ValidationError (a malformed value in a filter) is a 400,
    a transition the engine refuses (retrying a running job) is a 409, and a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE a 413 in JSON (Django's own answer is an HTML 400 with no reason)."""
    from runs.services import TransitionError

    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(f"the request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes")
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.messages)
    elif isinstance(exc, TransitionError):
        exc = Conflict(str(exc))
    return drf_exception_handler(exc, context)
