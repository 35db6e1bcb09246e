from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from artifacts.junit import MAX_FAILED_CASES, Summary, parse_junit_xml, summarize_archive

DATA = Path(__file__).parent / "data"


def parse(*documents: bytes) -> Summary:
    summary = Summary()
    for i, document in enumerate(documents):
        parse_junit_xml(io.BytesIO(document), file_name=f"report-{i}.xml", summary=summary)
    return summary


def archive_of(files: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


@pytest.fixture(scope="module")
def pytest_report(tmp_path_factory) -> bytes:
    """A report written by pytest itself (--junitxml) for a pass, a failure, an error in a
    fixture, a skip and an expected failure."""
    directory = tmp_path_factory.mktemp("pytest-report")
    (directory / "test_shop.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def database():
                raise ConnectionError("database is down")

            def test_adds():
                assert 1 + 1 == 2

            def test_totals():
                assert sum([1, 2]) == 4, "the total is off"

            def test_queries(database):
                pass

            @pytest.mark.skip(reason="needs a printer")
            def test_prints():
                pass

            @pytest.mark.xfail(reason="known bug")
            def test_rounds():
                assert round(2.5) == 3
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "PYTEST"))}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:django", "-p", "no:cacheprovider", "-c", os.devnull]
        + ["--junitxml", "report.xml", "test_shop.py"],
        cwd=directory,
        env=env,
        capture_output=True,
        check=False,
    )
    return (directory / "report.xml").read_bytes()


def test_a_real_pytest_report_counts_passes_failures_errors_and_skips(pytest_report):
    summary = parse(pytest_report)

    assert (summary.tests, summary.failures, summary.errors, summary.skipped) == (5, 1, 1, 2)
    assert summary.suites == 1
    failed = {case["name"]: case for case in summary.failed_cases}
    assert failed["test_totals"]["kind"] == "failure"
    assert "the total is off" in failed["test_totals"]["message"]
    assert failed["test_totals"]["classname"] == "test_shop"
    assert failed["test_queries"]["kind"] == "error"
    assert "database is down" in failed["test_queries"]["message"] + failed["test_queries"]["detail"]


def test_a_surefire_report_gives_each_failure_its_message_type_and_stack():
    summary = parse((DATA / "surefire-TEST-com.example.CalculatorTest.xml").read_bytes())

    assert (summary.tests, summary.failures, summary.errors, summary.skipped) == (4, 1, 1, 1)
    failure, error = summary.failed_cases
    assert failure["name"] == "dividesByZero"
    assert failure["message"] == "expected: <Infinity> but was: <NaN>"
    assert failure["type"] == "org.opentest4j.AssertionFailedError"
    assert "CalculatorTest.java:27" in failure["detail"]
    assert error["kind"] == "error" and "NullPointerException" in error["type"]
    assert summary.duration_s == pytest.approx(0.019)


def test_a_junit5_console_report_with_parameterized_cases():
    summary = parse((DATA / "junit5-console-TEST-junit-jupiter.xml").read_bytes())

    assert (summary.tests, summary.failures, summary.errors, summary.skipped) == (3, 1, 0, 0)
    assert summary.failed_cases[0]["name"] == "[2] name="
    assert summary.failed_cases[0]["message"] == "expected: <Hello, stranger> but was: <Hello, >"


def test_a_go_junit_report_of_two_packages_counts_two_suites_and_takes_the_message_from_the_text():
    summary = parse((DATA / "go-junit-report.xml").read_bytes())

    assert (summary.suites, summary.tests, summary.failures, summary.skipped) == (2, 5, 1, 1)
    (case,) = summary.failed_cases
    assert case["suite"] == "github.com/acme/shop/cart"
    assert case["name"] == "TestTotal/with_discount"
    assert case["message"] == "Failed"
    assert "total = 90, want 81" in case["detail"]


def test_counts_come_from_the_test_cases_not_from_the_suites_attributes():
    summary = parse(
        b'<testsuite name="liar" tests="100" failures="0"><testcase name="a"/>'
        b'<testcase name="b"><failure>boom\nmore</failure></testcase></testsuite>'
    )

    assert (summary.tests, summary.failures) == (2, 1)
    assert summary.failed_cases[0]["message"] == "boom"


def test_nested_suites_and_namespaced_tags_are_understood():
    summary = parse(
        b'<testsuites xmlns="urn:x"><testsuite name="outer"><testsuite name="inner">'
        b'<testcase name="a"/><testcase name="b"><error message="bad"/></testcase>'
        b"</testsuite></testsuite></testsuites>"
    )

    assert (summary.suites, summary.tests, summary.errors) == (1, 2, 1)
    assert summary.failed_cases[0]["suite"] == "inner"


def test_a_report_with_a_doctype_and_entities_is_refused_and_listed_as_a_problem():
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b'<testsuite><testcase name="&lol2;"/></testsuite>'
    )
    good = (DATA / "go-junit-report.xml").read_bytes()

    summary = summarize_archive(archive_of({"bomb.xml": bomb, "go.xml": good}), max_bytes=10**7)

    assert summary.tests == 5
    assert len(summary.problems) == 1 and summary.problems[0].startswith("bomb.xml: not JUnit XML (DTDForbidden")


def test_a_malformed_file_is_a_problem_and_the_other_files_still_count():
    summary = summarize_archive(
        archive_of({"broken.xml": b"<testsuite><testcase", "ok.xml": b'<testsuite><testcase name="a"/></testsuite>'}),
        max_bytes=10**7,
    )

    assert summary.tests == 1
    assert summary.problems[0].startswith("broken.xml: not JUnit XML")


def test_failed_cases_past_the_limit_are_counted_but_not_all_kept():
    cases = b"".join(
        b'<testcase name="t%d"><failure message="no"/></testcase>' % i for i in range(MAX_FAILED_CASES + 5)
    )

    summary = parse(b"<testsuite>" + cases + b"</testsuite>")

    assert summary.failures == MAX_FAILED_CASES + 5
    assert len(summary.failed_cases) == MAX_FAILED_CASES
    assert summary.failed_cases_truncated


def test_a_report_archive_that_unpacks_past_the_limit_stops_with_a_problem():
    big = b"<testsuite>" + b'<testcase name="x"/>' * 50_000 + b"</testsuite>"

    summary = summarize_archive(archive_of({"big.xml": big}), max_bytes=100_000)

    assert any("more than 100000 bytes" in problem for problem in summary.problems)
