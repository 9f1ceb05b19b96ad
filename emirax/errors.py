"""The Emirax error tree: the only exceptions that reach users of the library.

    EmiraxError                 base: every error Emirax raises on purpose
    ├── SourceError             problems in rule sources; carries a list of Diagnostics
    │   ├── ParseError          the text is not Emirax (syntax)
    │   └── CheckError          the text parses but breaks a rule of the language
    ├── BundleError             a .emxb file is malformed, tampered with or hostile
    ├── IRError                 an IR document fails verification (schema, operators, names, sizes)
    └── ProjectError            a project folder or emirax.toml is missing or malformed

A `Diagnostic` is one message at one `Span`; a `SourceError` holds all of them, sorted, so several
mistakes in one file are reported together. `diagnostics.render` turns them into text.
"""

from __future__ import annotations

from dataclasses import dataclass

from emirax.source import Span


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem at one place. `hint` is an optional second line ("did you mean ...?")."""

    span: Span
    message: str
    severity: str = "error"
    hint: str | None = None

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.span.file, self.span.line, self.span.column, self.message)

    def __str__(self) -> str:
        return f"{self.span}: {self.severity}: {self.message}"


class EmiraxError(Exception):
    """Base of every error Emirax raises on purpose."""


class SourceError(EmiraxError):
    """Errors located in rule sources; `diagnostics` is sorted by file, line and column."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        # Filled by whoever knows them (emirax.pipeline), so the error can be rendered with its
        # source lines: the warnings found next to the errors, and the texts by file name.
        self.warnings: list[Diagnostic] = []
        self.sources: dict[str, str] = {}
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class ParseError(SourceError):
    """The source is not syntactically valid Emirax."""


class CheckError(SourceError):
    """The source parses but names, types or structure are wrong."""


class BundleError(EmiraxError):
    """A bundle file cannot be trusted or read."""


class IRError(EmiraxError):
    """An IR document is not valid Emirax IR."""


class ProjectError(EmiraxError):
    """A project folder or its emirax.toml is missing or malformed."""
