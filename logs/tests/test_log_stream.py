"""The runner's side of logs: LogStream over the real HttpBackend, against a live server.

Network faults are injected below our code, in the requests transport: a request that never
reaches the server, and one whose answer is lost after the server stored the chunk.
"""

from __future__ import annotations

import pytest
import requests
from requests.adapters import HTTPAdapter

from logs.masking import MASK
from logs.models import StepLog
from logs.selectors import log_text
from runners.executors.base import LogStream
from runners.http_client import HttpBackend

from .conftest import make_running_job

pytestmark = pytest.mark.django_db(transaction=True)


class FlakyNetwork(HTTPAdapter):
    """Fails the log requests named in `plan` (by their number, from 1): "request" drops the
    request before it is sent, "response" sends it and loses the answer."""

    def __init__(self, plan: dict[int, str]):
        super().__init__()
        self.plan, self.count = plan, 0

    def send(self, request, *args, **kwargs):
        if "/log" in request.url:
            self.count += 1
            fault = self.plan.get(self.count)
            if fault == "request":
                raise requests.ConnectionError("connection refused (injected)")
            if fault == "response":
                super().send(request, *args, **kwargs)
                raise requests.ConnectionError("connection reset before the answer (injected)")
        return super().send(request, *args, **kwargs)


@pytest.fixture
def backend(live_server):
    backend = HttpBackend(url=live_server.url, token="cvr_unused-for-logs")
    yield backend
    backend.close_thread()


def stream_for(backend, running, **kwargs) -> LogStream:
    return LogStream(backend, running.claimed, running.claimed.steps[0], **kwargs)


def test_output_written_in_pieces_arrives_byte_for_byte_with_multibyte_characters_split(backend):
    running = make_running_job()
    stream = stream_for(backend, running)
    data = "".join(f"line {n} ✓ héllo\n" for n in range(500)).encode()

    for start in range(0, len(data), 7):  # 7-byte reads cut characters in half
        stream.write_bytes(data[start : start + 7])
        if start % 700 == 0:
            stream.flush()
    stream.flush(final=True)

    assert log_text(step=running.step) == data.decode()
    assert stream.offset == len(data)


def test_a_chunk_whose_answer_was_lost_is_not_stored_twice_and_shipping_resumes_where_the_server_is(backend):
    running = make_running_job()
    backend.client.session.mount("http://", FlakyNetwork({2: "response"}))
    stream = stream_for(backend, running)

    stream.write("one\n")
    stream.flush()
    stream.write("two\n")
    stream.flush()  # stored by the server, but the runner never hears so: it keeps "two\n"
    stream.write("three\n")
    stream.flush(final=True)  # sends "two\nthree\n" at 4: an overlap; the server says 8; "three\n" goes

    assert log_text(step=running.step) == "one\ntwo\nthree\n"
    assert list(StepLog.objects.filter(step=running.step).values_list("offset", "content")) == [
        (0, "one\n"),
        (4, "two\n"),
        (8, "three\n"),
    ]


def test_output_waits_while_the_server_is_unreachable_and_arrives_once_it_is_back(backend):
    running = make_running_job()
    backend.client.session.mount("http://", FlakyNetwork({1: "request", 2: "request"}))
    stream = stream_for(backend, running)

    stream.write("first\n")
    stream.flush()
    stream.write("second\n")
    stream.flush()
    assert log_text(step=running.step) == ""
    stream.write("third\n")
    stream.flush(final=True)

    assert log_text(step=running.step) == "first\nsecond\nthird\n"


def test_a_secret_split_across_two_flushes_never_reaches_the_server(backend):
    running = make_running_job()
    secret = "hunter2-hunter2"
    stream = stream_for(backend, running, masked=[secret])

    stream.write("export TOKEN=hunter2-hun")
    stream.flush()  # a timed flush in the middle of the secret
    assert log_text(step=running.step) == "export TOKEN="
    stream.write("ter2\ndone\n")
    stream.flush(final=True)

    stored = log_text(step=running.step)
    assert stored == f"export TOKEN={MASK}\ndone\n"
    assert not any(content.endswith("hunter") for content in StepLog.objects.values_list("content", flat=True))


def test_a_stream_after_the_checkout_continues_at_the_offset_the_first_one_ended(backend):
    running = make_running_job()
    checkout = stream_for(backend, running)
    checkout.write("Fetching abc\n")
    checkout.flush(final=True)

    step = stream_for(backend, running)
    step.offset = checkout.offset
    step.write("$ make\n")
    step.flush(final=True)

    assert log_text(step=running.step) == "Fetching abc\n$ make\n"


def test_nul_bytes_in_output_are_shown_as_replacement_characters(backend):
    running = make_running_job()
    stream = stream_for(backend, running)

    stream.write_bytes(b"binary\x00junk\xff\n")
    stream.flush(final=True)

    assert log_text(step=running.step) == "binary\ufffdjunk\ufffd\n"
