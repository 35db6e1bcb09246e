"""JUnit XML test reports: totals and failed cases, from the shapes real tools write.

Covers pytest (`--junitxml`, a <testsuites> root or a bare <testsuite>), Maven Surefire /
JUnit 5 (<testsuite> with <properties>, <system-out>, <error>, <skipped>, rerun elements),
go-junit-report and gotestsum (<testsuites> of packages), and nested suites. Outcomes are
counted from the <testcase> elements themselves, never from a suite's `tests=`/`failures=`
attributes, which tools fill in inconsistently (or not at all).

The XML is untrusted job output: it is parsed with defusedxml (no DTDs, no entity
expansion, no external entities) and streamed with iterparse, clearing each case once
read, so a big report is never a big tree in memory.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from runners.archives import BoundedReader

MAX_FAILED_CASES = 200
MAX_MESSAGE_CHARS = 1000
MAX_DETAIL_CHARS = 4000
MAX_PROBLEMS = 20
_FAILURE_TAGS = {"failure": "failure", "error": "error"}


@dataclass
class Summary:
    suites: int = 0
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    duration_s: float = 0.0
    failed_cases: list[dict[str, str]] = field(default_factory=list)
    failed_cases_truncated: bool = False
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text[:500])


class ReportTooLarge(Exception):
    pass


def _local(tag: Any) -> str:
    # Namespaced tags ({ns}testcase) from some tools; comments and PIs have non-str tags.
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _seconds(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        # Some tools write "1,234.5" or "12.3s".
        seconds = float(value.replace(",", "").rstrip("s"))
    except ValueError:
        return 0.0
    return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else 0.0


def _clip(text: str | None, limit: int) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_junit_xml(stream: IO[bytes], *, file_name: str, summary: Summary) -> None:
    """Add one JUnit XML document's test cases to `summary`. Malformed XML, a DTD or entities
    raise ParseError / DefusedXmlException (the caller records the file as a problem); the
    cases read before the error stay counted."""
    suite_names: list[str] = []
    suite_has_cases: list[bool] = []
    for event, element in iterparse(stream, events=("start", "end"), forbid_dtd=True):
        tag = _local(element.tag)
        if tag == "testsuite":
            if event == "start":
                suite_names.append(element.get("name") or "")
                suite_has_cases.append(False)
            else:
                if suite_has_cases.pop():
                    summary.suites += 1
                suite_names.pop()
                element.clear()
        elif tag == "testcase" and event == "end":
            if suite_has_cases:
                suite_has_cases[-1] = True
            _add_case(element, suite=suite_names[-1] if suite_names else "", file_name=file_name, summary=summary)
            element.clear()


def _add_case(case: Any, *, suite: str, file_name: str, summary: Summary) -> None:
    summary.tests += 1
    summary.duration_s += _seconds(case.get("time"))
    outcome, detail = "passed", None
    for child in case:
        tag = _local(child.tag)
        if tag in _FAILURE_TAGS:
            # An <error> beats a <failure> if a tool writes both.
            if outcome != "error":
                outcome, detail = _FAILURE_TAGS[tag], child
        elif tag == "skipped" and outcome == "passed":
            outcome = "skipped"
    if outcome == "skipped":
        summary.skipped += 1
        return
    if outcome == "passed":
        return
    if outcome == "failure":
        summary.failures += 1
    else:
        summary.errors += 1
    if len(summary.failed_cases) >= MAX_FAILED_CASES:
        summary.failed_cases_truncated = True
        return
    text = detail.text if detail is not None else ""
    message = (detail.get("message") if detail is not None else "") or ""
    if not message.strip():
        message = next((line for line in (text or "").strip().splitlines() if line.strip()), "")
    kind = detail.get("type") if detail is not None else ""
    summary.failed_cases.append(
        {
            "suite": _clip(suite, 300),
            "classname": _clip(case.get("classname"), 300),
            "name": _clip(case.get("name"), 300),
            "kind": outcome,
            "type": _clip(kind, 200),
            "message": _clip(message, MAX_MESSAGE_CHARS),
            "detail": _clip(text, MAX_DETAIL_CHARS),
            "file": _clip(case.get("file") or file_name, 300),
        }
    )


def summarize_archive(stream: IO[bytes], *, max_bytes: int) -> Summary:
    """Parse every XML file of a tar.gz of JUnit reports (a TEST_REPORT artifact), streaming."""
    summary = Summary()
    try:
        unpacked = BoundedReader(
            gzip.GzipFile(fileobj=stream, mode="rb"),
            max_bytes,
            lambda limit: ReportTooLarge(f"the report archive unpacks to more than {limit} bytes"),
        )
        with tarfile.open(fileobj=unpacked, mode="r|") as archive:
            for member in _regular_files(archive):
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                try:
                    parse_junit_xml(handle, file_name=member.name, summary=summary)
                except (ParseError, DefusedXmlException) as exc:
                    summary.problem(f"{member.name}: not JUnit XML ({type(exc).__name__}: {exc})")
    except ReportTooLarge as exc:
        summary.problem(str(exc))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        summary.problem(f"unreadable report archive: {exc}")
    return summary


def _regular_files(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in archive:
        if member.isfile():
            yield member
