"""Log rendering (logs.rendering), and the browser's renderer (static/js/log-viewer.js) beside it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logs.rendering import render_log

ESC = "\x1b"


def texts_of(html: str) -> list[str]:
    """The text of each log line (without line numbers, times and durations)."""
    texts = re.findall(r'<span class="log-tx">(.*?)</span>(?:</div>|<span class="log-d|</summary>)', html)
    return [re.sub(r"<[^>]+>", "", text) for text in texts]


# --- Behaviour.


def test_markup_in_the_log_is_shown_as_text():
    html = render_log("<script>alert(\"x\")</script> & 'q'\n")

    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in html


def test_each_line_gets_a_number_and_an_anchor():
    html = render_log("one\ntwo\n", prefix="s0-L")

    assert '<div class="log-line" id="s0-L1"><a class="log-ln" href="#s0-L1">1</a>' in html
    assert '<div class="log-line" id="s0-L2"><a class="log-ln" href="#s0-L2">2</a>' in html


def test_numbering_can_start_further_down_for_the_tail_of_a_long_log():
    assert 'id="L41"' in render_log("tail\n", first_line=41)


def test_the_sixteen_colours_become_classes_and_reset_ends_them():
    html = render_log(f"{ESC}[1;31mred bold{ESC}[0m plain {ESC}[94mbright{ESC}[39m\n")

    assert '<span class="ansi-b ansi-fg-1">red bold</span> plain <span class="ansi-fg-12">bright</span>' in html


def test_256_and_24_bit_colours_become_computed_styles():
    html = render_log(f"{ESC}[38;5;208morange{ESC}[48;2;1;2;300mbg\n")

    assert '<span style="color:#ff8700">orange</span>' in html
    assert '<span style="color:#ff8700;background-color:#0102ff">bg</span>' in html


def test_a_colour_carries_over_to_the_next_line_until_it_is_reset():
    html = render_log(f"{ESC}[32mgreen\nstill green{ESC}[0m\n")

    assert '<span class="ansi-fg-2">still green</span>' in html


def test_other_escape_sequences_and_control_characters_are_dropped():
    assert texts_of(render_log(f"a{ESC}[2Kb{ESC}]0;title\x07c\x08d{ESC}[?25le\n")) == ["abcde"]


def test_a_carriage_return_overwrites_the_line_like_a_progress_bar():
    assert texts_of(render_log("10%\r50%\r100%\nwindows line\r\n")) == ["100%", "windows line"]


def test_a_gitlab_section_is_collapsible_with_its_header_and_duration():
    log = (
        f"{ESC}[0Ksection_start:1700000000:build[collapsed=true]\r{ESC}[0KBuilding the app\n"
        "compiling\n"
        f"{ESC}[0Ksection_end:1700000075:build\r{ESC}[0K\n"
        "after\n"
    )

    html = render_log(log)

    assert html.startswith('<details class="log-section"><summary class="log-line log-section-header" id="L1">')
    assert "Building the app</span>" in html
    assert '<span class="log-duration">1m 15s</span></summary>' in html
    assert texts_of(html) == ["Building the app", "compiling", "after"]
    assert html.index("compiling") < html.index("</details>") < html.index("after")


def test_sections_nest_and_the_end_of_an_outer_one_closes_the_inner_one():
    log = "section_start:1:outer\r\nsection_start:2:inner\r\nINSIDE\nsection_end:9:outer\r\nOUTSIDE\n"

    html = render_log(log)

    assert html.count("<details") == html.count("</details>") == 2
    assert html.index("INSIDE") < html.index("</details>\n</details>") < html.index("OUTSIDE")


def test_an_end_without_a_start_is_hidden_and_a_start_without_an_end_is_closed_at_the_end():
    html = render_log("section_end:5:nothing\r\nsection_start:1:open\r\nline\n")

    assert "nothing" not in html
    assert html.count("<details") == html.count("</details>") == 1
    assert "log-duration" not in html


def test_each_line_shows_the_time_of_the_chunk_it_started_in():
    first, second = datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC), datetime(2026, 1, 1, 12, 0, 9, tzinfo=UTC)

    html = render_log([("one\ntw", first), ("o\nthree\n", second)])

    times = re.findall(r'<time class="log-ts" datetime="[^"]+">([0-9:]+)</time>', html)
    assert times == ["12:00:01", "12:00:01", "12:00:09"]


# --- Properties.

ALLOWED = {
    "div": {"class", "id"},
    "a": {"class", "href"},
    "span": {"class", "style"},
    "time": {"class", "datetime"},
    "details": {"class", "open"},
    "summary": {"class", "id"},
}
SAFE_VALUE = {
    "class": re.compile(r"[a-z0-9 -]+"),
    "id": re.compile(r"L[0-9]+"),
    "href": re.compile(r"#L[0-9]+"),
    "style": re.compile(r"(color|background-color):#[0-9a-f]{6}(;background-color:#[0-9a-f]{6})?"),
    "datetime": re.compile(r"[0-9T:.+-]+"),
    "open": re.compile(r""),
}


class TagChecker(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ALLOWED:
            self.problems.append(f"tag {tag}")
            return
        for name, value in attrs:
            if name not in ALLOWED[tag] or not SAFE_VALUE[name].fullmatch(value or ""):
                self.problems.append(f"{tag} {name}={value!r}")
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.problems.append(f"unbalanced </{tag}>")

    def handle_startendtag(self, tag, attrs):
        self.problems.append(f"self-closing {tag}")

    def handle_comment(self, data):
        self.problems.append("comment")

    def handle_decl(self, decl):
        self.problems.append("declaration")

    def handle_pi(self, data):
        self.problems.append("processing instruction")


TOKENS = [
    "<",
    ">",
    "&",
    '"',
    "'",
    "<script>",
    "</span>",
    "<!--",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\x07",
    "\x00",
    "\x08",
    ESC,
    f"{ESC}[",
    f"{ESC}[0m",
    f"{ESC}[1;31m",
    f"{ESC}[38;5;",
    f"{ESC}[48;2;10;20;30m",
    f"{ESC}[0K",
    f"{ESC}]8;;http://x\x07",
    "m",
    ";",
    "5",
    "section_start:100:a",
    "section_start:100:a[collapsed=true]",
    "section_end:200:a",
    "section_start:1:b",
    "section_end:2:b",
    "[",
    "]",
    "é",
    "✓",
    "😀",
]
log_texts = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=5)), max_size=40).map("".join)


@given(log_texts)
def test_the_html_has_only_our_own_tags_balanced_and_no_markup_from_the_log(text):
    checker = TagChecker()
    checker.feed(render_log(text))
    checker.close()

    assert checker.problems == []
    assert checker.stack == []


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")) | st.just("\n"), max_size=200))
def test_printable_text_comes_out_line_by_line_unchanged(text):
    from html import unescape

    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    rendered = [unescape(t) for t in texts_of(render_log(text))]

    # A line that looks like a section marker is structure, not text: there are none here.
    assert rendered == lines


# --- The browser's renderer writes the same HTML (run under node, where it is installed).


@pytest.fixture(scope="module")
def node_renderer():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the browser renderer cannot be compared")
    script = Path(__file__).resolve().parents[2] / "static" / "js" / "log-viewer.js"
    program = (
        f"const L = require({json.dumps(str(script))});"
        "const rl = require('readline').createInterface({input: process.stdin});"
        "rl.on('line', (line) => process.stdout.write(JSON.stringify(L.renderHtml(JSON.parse(line))) + '\\n'));"
    )
    process = subprocess.Popen(
        [node, "-e", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8"
    )

    def render(text: str) -> str:
        process.stdin.write(json.dumps(text) + "\n")
        process.stdin.flush()
        return json.loads(process.stdout.readline())

    yield render
    process.stdin.close()
    process.wait(timeout=10)


def test_the_browser_renders_a_typical_log_exactly_as_the_server(node_renderer):
    log = (
        "$ make\n"
        f"{ESC}[0Ksection_start:1700000000:deps[collapsed=true]\r{ESC}[0K{ESC}[36mInstalling{ESC}[0m\n"
        f"pip install <pkg> & 'x'\n{ESC}[0Ksection_end:1700000042:deps\r{ESC}[0K\n"
        f"{ESC}[1;38;5;196mFAILED{ESC}[0m 3 tests\r\n10%\r100%\nno newline at the end"
    )

    assert node_renderer(log) == render_log(log)


@settings(max_examples=150, deadline=None)
@given(log_texts)
def test_the_browser_renders_any_log_exactly_as_the_server(node_renderer, text):
    assert node_renderer(text) == render_log(text)
