"""Source text and positions.

Owns `Span` (where a node or diagnostic sits: file, line, column, 1-based) and `Source` (a file's
text, with the line lookup that diagnostics need to show the offending line under a caret).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """A position in a source file; `line` and `column` are 1-based, `end_*` exclusive-ish hints."""

    file: str
    line: int
    column: int
    end_line: int = 0
    end_column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def __reduce__(self) -> tuple[type, tuple[str, int, int, int, int]]:
        # Every AST node holds a Span: pickling them as plain tuples halves the time of the
        # compile cache's writes (emirax.pipeline).
        return (Span, (self.file, self.line, self.column, self.end_line, self.end_column))


NO_SPAN = Span("<unknown>", 0, 0)


@dataclass(frozen=True)
class Source:
    """The text of one `.emx` file, named as the user named it."""

    name: str
    text: str
    _lines: list[str] = field(default_factory=list, compare=False, repr=False)

    def line(self, number: int) -> str:
        """Return line `number` (1-based) without its newline, or '' when out of range."""
        if not self._lines:
            # Spans count "\n" only, so lines are split on it alone (str.splitlines would also
            # split on \r, \f, \u2028 and put the caret under the wrong line).
            self._lines.extend(line.removesuffix("\r") for line in self.text.split("\n"))
        if 1 <= number <= len(self._lines):
            return self._lines[number - 1]
        return ""
