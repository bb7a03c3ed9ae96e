"""Diagnostics: every error and warning a user sees, pointing at the text that caused it.

A `Span` is a range of characters in a `Source` (a file, or inline text). Text that
comes from inside a YAML string is parsed as a `Fragment`, which maps each of its
characters back to the file, so a diagnostic always names the file's true line.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, eq=False)
class Source:
    """The whole text of a spec file (or of inline DSL text, with `path` None)."""

    text: str
    path: str | None = None

    def __repr__(self) -> str:
        return f"Source({self.display_name!r})"

    @property
    def display_name(self) -> str:
        return self.path if self.path is not None else "<inline>"

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset.

        >>> Source("ab\\ncd").line_col(3)
        (2, 1)
        """
        starts = self._line_starts()
        line = bisect.bisect_right(starts, offset) - 1
        return line + 1, offset - starts[line] + 1

    def line_text(self, line: int) -> str:
        # Lines end at "\n" only, as `line_col` counts them (not splitlines' \f, \x1c, ...);
        # the line after a final newline (where YAML reports the end of the text) is "".
        lines = self.text.split("\n")
        return lines[line - 1].rstrip("\r") if line <= len(lines) else ""

    def _line_starts(self) -> list[int]:
        cached = self.__dict__.get("_starts")
        if cached is None:
            cached = [0] + [i + 1 for i, ch in enumerate(self.text) if ch == "\n"]
            object.__setattr__(self, "_starts", cached)
        return cached


@dataclass(frozen=True)
class Span:
    source: Source
    start: int
    end: int

    def __repr__(self) -> str:
        return f"Span({self.source.display_name}:{self.line}:{self.col})"

    @property
    def line(self) -> int:
        return self.source.line_col(self.start)[0]

    @property
    def col(self) -> int:
        return self.source.line_col(self.start)[1]

    def text(self) -> str:
        return self.source.text[self.start:self.end]


@dataclass(frozen=True)
class Fragment:
    """A piece of a source (a YAML scalar) parsed on its own.

    `offsets[i]` is the position in `source.text` of `text[i]`; None means the
    fragment is the source itself.
    """

    source: Source
    text: str
    offsets: tuple[int, ...] | None = None

    def span(self, start: int, end: int) -> Span:
        if self.offsets is None:
            return Span(self.source, start, end)
        last = len(self.offsets) - 1
        first = self.offsets[min(start, last)]
        stop = self.offsets[min(max(end - 1, start), last)] + 1
        return Span(self.source, first, max(stop, first + 1))


MAX_MESSAGE = 1000  # characters of a diagnostic's message; the middle of a longer one is cut
MAX_LINE = 160      # a longer source line is shown as a window around the caret ...
LINE_WINDOW = 120   # ... of this many characters
MAX_DIGITS = 50     # digits of a whole number in a spec (see `too_many_digits`)


def clip(text: str, limit: int = 80, keep_end: bool = False) -> str:
    """`text`, cut to `limit` characters with "…" where it is cut: for quoting what the
    input wrote in a message.

    >>> clip("x" * 100, 10)
    'xxxxxxxxx…'
    """
    if len(text) <= limit:
        return text
    if not keep_end:
        return text[:limit - 1] + "…"
    tail = limit // 4
    return text[:limit - tail - 1] + "…" + text[len(text) - tail:]


def too_many_digits(digits: int) -> str | None:
    """The message for a whole number with more than `MAX_DIGITS` digits, else None.

    No layer has a size, stride or count of more than a few digits; a longer number
    would only overflow the analysis' floats (past 308 digits) or Python's int-to-text
    conversion (past 4,300 digits), so it is refused where it is written."""
    if digits <= MAX_DIGITS:
        return None
    return f"a number with {digits:,} digits is too large (at most {MAX_DIGITS} digits)"


def _window(text: str, start: int, width: int) -> tuple[str, int, int]:
    """A long line cut to a window around the caret: (shown text, caret column from 0,
    caret width)."""
    if len(text) <= MAX_LINE:
        return text, start, width
    # From the line's start while the caret is in its first two thirds, else with a
    # third of the window before the caret.
    lo = 0 if start < 2 * LINE_WINDOW // 3 else max(0, min(start - LINE_WINDOW // 3,
                                                         len(text) - LINE_WINDOW))
    hi = min(len(text), lo + LINE_WINDOW)
    shown = ("…" if lo > 0 else "") + text[lo:hi] + ("…" if hi < len(text) else "")
    caret = start - lo + (lo > 0)
    return shown, caret, max(1, min(width, hi - start))


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error" | "warning" | "note"
    message: str
    span: Span | None = None
    notes: tuple["Diagnostic", ...] = ()

    def __post_init__(self):
        # A message may quote what the input wrote (a name, a value): cap it, so that a
        # megabyte-long name makes a diagnostic of a few lines, not of a megabyte.
        if len(self.message) > MAX_MESSAGE:
            object.__setattr__(self, "message", clip(self.message, MAX_MESSAGE, keep_end=True))

    def format(self) -> str:
        """`file:line:col: severity: message`, the source line, and a caret span.

        A source line longer than `MAX_LINE` is shown as a window of `LINE_WINDOW`
        characters around the caret, with "…" where it is cut."""
        if self.span is None:
            head = f"{self.severity}: {self.message}"
            return "\n".join([head] + [n.format() for n in self.notes])
        src, line, col = self.span.source, self.span.line, self.span.col
        text = src.line_text(line)
        width = max(1, min(self.span.end - self.span.start, len(text) - col + 1))
        text, caret, width = _window(text, col - 1, width)
        lines = [
            f"{src.display_name}:{line}:{col}: {self.severity}: {self.message}",
            "    " + text.expandtabs(1),
            "    " + " " * caret + "^" * width,
        ]
        return "\n".join(lines + [n.format() for n in self.notes])

    def to_dict(self) -> dict:
        where = {"file": None, "line": None, "col": None, "end_line": None, "end_col": None}
        if self.span is not None:
            src = self.span.source
            end_line, end_col = src.line_col(max(self.span.end - 1, self.span.start))
            where = {"file": src.path, "line": self.span.line, "col": self.span.col,
                     "end_line": end_line, "end_col": end_col + 1}
        return {"severity": self.severity, "message": self.message, **where,
                "notes": [n.message for n in self.notes]}


class CnnDslError(Exception):
    """The one exception cnndsl raises for bad input; `str()` is the full diagnostic."""

    def __init__(self, message: str, span: Span | None = None, *,
                 diagnostics: list[Diagnostic] | None = None):
        self.diagnostics = diagnostics or [Diagnostic("error", message, span)]
        super().__init__(str(self))

    @classmethod
    def from_diagnostics(cls, diagnostics: list[Diagnostic]) -> "CnnDslError":
        return cls("", diagnostics=[d for d in diagnostics if d.severity == "error"])

    def with_note(self, message: str, span: Span | None) -> "CnnDslError":
        """The same error, noting where it was reached from (a block call)."""
        first = self.diagnostics[0]
        first = Diagnostic(first.severity, first.message, first.span,
                           first.notes + (Diagnostic("note", message, span),))
        self.diagnostics = [first] + self.diagnostics[1:]
        return self

    @property
    def message(self) -> str:
        return self.diagnostics[0].message

    @property
    def span(self) -> Span | None:
        return self.diagnostics[0].span

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def col(self) -> int | None:
        return self.span.col if self.span else None

    def __str__(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)


def did_you_mean(word: str, choices) -> str:
    """' — did you mean X?' when a close choice exists, else ''.

    >>> did_you_mean("strid", ["stride", "pad"])
    " — did you mean 'stride'?"
    """
    import difflib

    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" — did you mean '{lowered[close[0]]}'?" if close else ""
