"""Log text to HTML: ANSI SGR colours, line numbers with anchors, collapsible sections, timestamps.

Log content is untrusted (it is whatever a job printed), so every piece of text is escaped
before it is wrapped in markup, and the only markup is generated here: a fixed set of tags
and attributes, with class names and colours computed from numbers, never copied from input.
static/js/log-viewer.js renders live logs in the browser with the same rules and classes.

- SGR (``ESC [ ... m``): bold, faint, italic, underline, the 16 colours (classes), 256 colours
  and 24-bit colours (``style="color:#rrggbb"``), reset; state carries across lines. Other
  escape sequences and control characters are dropped.
- ``\\r``: what follows overwrites the line (progress bars); a trailing ``\\r`` (CRLF) is ignored.
- GitLab sections: ``section_start:<unix ts>:<name>[collapsed=true]\\r\\x1b[0K<header>`` opens a
  collapsible section whose header line is the text after the marker, ``section_end:<ts>:<name>``
  closes it (and any section opened inside it); the header shows the section's duration.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.utils.html import escape

_SGR_OR_ESCAPE = re.compile(
    r"\x1b\[([0-9;:?]*)([ -/]*[@-~])"  # CSI: SGR when the final byte is "m"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC (window titles, hyperlinks): dropped
    r"|\x1b[ -/]*[0-~]?"  # other escapes: dropped
    r"|[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]"  # control characters but \t, \n and \r: dropped
)
_SECTION = re.compile(
    r"^(?:\x1b\[0K)?section_(start|end):([0-9]{1,12}):([A-Za-z0-9_.\-]{1,200})(\[[^\]\r\n]*\])?\r(?:\x1b\[0K)?(.*)$",
    re.S,
)
# The 256-colour cube and grey ramp, as xterm defines them.
_CUBE = (0, 95, 135, 175, 215, 255)


@dataclass
class Style:
    bold: bool = False
    faint: bool = False
    italic: bool = False
    underline: bool = False
    fg: int | str | None = None  # 0-15: a class; "#rrggbb": a style
    bg: int | str | None = None

    def apply(self, params: str) -> None:
        codes = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)] if params else [0]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code == 0:
                self.__init__()
            elif code == 1:
                self.bold = True
            elif code == 2:
                self.faint = True
            elif code == 3:
                self.italic = True
            elif code == 4:
                self.underline = True
            elif code == 22:
                self.bold = self.faint = False
            elif code == 23:
                self.italic = False
            elif code == 24:
                self.underline = False
            elif 30 <= code <= 37:
                self.fg = code - 30
            elif 90 <= code <= 97:
                self.fg = code - 90 + 8
            elif code == 39:
                self.fg = None
            elif 40 <= code <= 47:
                self.bg = code - 40
            elif 100 <= code <= 107:
                self.bg = code - 100 + 8
            elif code == 49:
                self.bg = None
            elif code in (38, 48):
                colour, used = _extended_colour(codes[i + 1 :])
                if colour is not None:
                    setattr(self, "fg" if code == 38 else "bg", colour)
                i += used
            i += 1

    def is_plain(self) -> bool:
        return self == Style()

    def open_tag(self) -> str:
        classes = [
            name for name, on in (("b", self.bold), ("f", self.faint), ("i", self.italic), ("u", self.underline)) if on
        ]
        classes = [f"ansi-{c}" for c in classes]
        styles = []
        for kind, value, prop in (("fg", self.fg, "color"), ("bg", self.bg, "background-color")):
            if isinstance(value, int):
                classes.append(f"ansi-{kind}-{value}")
            elif isinstance(value, str):
                styles.append(f"{prop}:{value}")
        style = f' style="{";".join(styles)}"' if styles else ""
        return f'<span class="{" ".join(classes)}"{style}>' if classes else f"<span{style}>"


def _extended_colour(rest: list[int]) -> tuple[int | str | None, int]:
    """38;5;n and 38;2;r;g;b. Returns (colour, how many parameters it used)."""
    if len(rest) >= 2 and rest[0] == 5:
        n = rest[1]
        if n < 16:
            return n, 2
        if n < 232:
            n -= 16
            r, g, b = _CUBE[(n // 36) % 6], _CUBE[(n // 6) % 6], _CUBE[n % 6]
        else:
            r = g = b = min(255, 8 + 10 * (n - 232))
        return f"#{r:02x}{g:02x}{b:02x}", 2
    if len(rest) >= 4 and rest[0] == 2:
        r, g, b = (min(255, v) for v in rest[1:4])
        return f"#{r:02x}{g:02x}{b:02x}", 4
    return None, len(rest) if rest and rest[0] not in (2, 5) else 0


def render_line_html(raw: str, style: Style) -> str:
    """The inner HTML of one line; `style` is the SGR state at its start and is updated."""
    segments: list[tuple[str, str]] = []  # (open tag or "", escaped text)
    current: list[str] = []

    def close_text() -> None:
        text = "".join(current)
        current.clear()
        if text:
            segments.append(("" if style.is_plain() else style.open_tag(), escape(text)))

    raw = raw[:-1] if raw.endswith("\r") else raw
    position = 0
    for match in _SGR_OR_ESCAPE.finditer(raw):
        _overwrite(raw[position : match.start()], current, segments)
        position = match.end()
        if match.group(2) == "m":
            close_text()
            style.apply(match.group(1))
    _overwrite(raw[position:], current, segments)
    close_text()
    return "".join(f"{tag}{text}</span>" if tag else text for tag, text in segments)


def _overwrite(text: str, current: list[str], segments: list[tuple[str, str]]) -> None:
    """Add text; a carriage return throws away what the line showed so far."""
    *before, last = text.split("\r")
    if before:
        current.clear()
        segments.clear()
    current.append(last)


# --- Lines, sections and the document.


@dataclass
class _Line:
    number: int
    html: str
    at: datetime | None


@dataclass
class _Section:
    name: str
    started: int
    collapsed: bool
    header: _Line
    ended: int | None = None
    body: list[_Line | _Section] = field(default_factory=list)


def _lines(chunks: Iterable[tuple[str, datetime | None]]) -> Iterable[tuple[str, datetime | None]]:
    """Split chunks into lines, each with the time of the chunk its first character came in."""
    partial: list[str] = []
    started_at: datetime | None = None
    for text, at in chunks:
        if not text:
            continue
        if not partial:
            started_at = at
        pieces = text.split("\n")
        for piece in pieces[:-1]:
            partial.append(piece)
            yield "".join(partial), started_at
            partial.clear()
            started_at = at
        if pieces[-1]:
            partial.append(pieces[-1])
    if partial:
        yield "".join(partial), started_at


def render_log(chunks: Iterable[tuple[str, datetime | None]] | str, *, prefix: str = "L", first_line: int = 1) -> str:
    """The whole log as HTML (a fragment: one element per line, sections as <details>).

    `chunks`: the log's pieces with the time each was received, or plain text. `prefix`
    makes line anchors unique on a page with several logs (it must be [A-Za-z0-9_-]+)."""
    if isinstance(chunks, str):
        chunks = [(chunks, None)]
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ValueError(f"bad anchor prefix {prefix!r}")
    style = Style()
    root: list[_Line | _Section] = []
    stack: list[_Section] = []
    number = first_line
    for raw, at in _lines(chunks):
        marker = _SECTION.match(raw)
        if marker and marker.group(1) == "end":
            names = [s.name for s in stack]
            if marker.group(3) in names:
                while stack:
                    section = stack.pop()
                    section.ended = int(marker.group(2))
                    if section.name == marker.group(3):
                        break
            if not marker.group(5).strip("\r"):
                continue
            raw = marker.group(5)
            marker = None
        line = _Line(number=number, html="", at=at)
        number += 1
        if marker:
            line.html = render_line_html(marker.group(5), style)
            options = marker.group(4) or ""
            section = _Section(
                name=marker.group(3),
                started=int(marker.group(2)),
                collapsed="collapsed=true" in options,
                header=line,
            )
            (stack[-1].body if stack else root).append(section)
            stack.append(section)
        else:
            line.html = render_line_html(raw, style)
            (stack[-1].body if stack else root).append(line)
    out: list[str] = []
    _emit(root, prefix, out)
    return "".join(out)


def _emit(items: list[_Line | _Section], prefix: str, out: list[str]) -> None:
    for item in items:
        if isinstance(item, _Line):
            out.append(f'<div class="log-line" id="{prefix}{item.number}">{_gutter(item, prefix)}')
            out.append(f'<span class="log-tx">{item.html}</span></div>\n')
            continue
        header = item.header
        duration = ""
        if item.ended is not None:
            duration = f'<span class="log-duration">{_duration(item.ended - item.started)}</span>'
        out.append(f'<details class="log-section"{"" if item.collapsed else " open"}>')
        out.append(
            f'<summary class="log-line log-section-header" id="{prefix}{header.number}">{_gutter(header, prefix)}'
        )
        out.append(f'<span class="log-tx">{header.html}</span>{duration}</summary>\n')
        _emit(item.body, prefix, out)
        out.append("</details>\n")


def _gutter(line: _Line, prefix: str) -> str:
    anchor = f'<a class="log-ln" href="#{prefix}{line.number}">{line.number}</a>'
    if line.at is None:
        return anchor
    return f'{anchor}<time class="log-ts" datetime="{line.at.isoformat()}">{line.at.strftime("%H:%M:%S")}</time>'


def _duration(seconds: int) -> str:
    seconds = max(0, seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"
