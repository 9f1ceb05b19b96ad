"""Emirax projects: which `.emx` files make one bundle, and under which package and version.

    load_project(path, *, version=None) -> Project     raises ProjectError with one clear message
    read_sources(project) -> {display name: text}      raises ProjectError (size, not UTF-8)

A project is either one `.emx` file (a one-file project, version "0.0.0" unless given) or a folder
holding `emirax.toml`:

    [bundle]
    package = "media.encode"      # optional; when given, every file must declare it (the pipeline checks)
    version = "1.0.0"             # required unless `version=` is given (emirax compile --version V)
    rules = ["rules"]             # optional; folders under the root whose *.emx files (recursive) make the bundle

Everything here fails closed: unknown keys are refused (with a did-you-mean), rules folders may not
leave the project root (`..`, absolute paths, symlinks pointing outside), and the number and size of
files are capped (`MAX_FILES`, `MAX_FILE_BYTES`) so a stray folder cannot make a huge bundle.
Display names (the keys of `read_sources`, the names in diagnostics and in the bundle) are paths
relative to the project root in posix form, e.g. "rules/video.emx".
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from emirax.errors import ProjectError

CONFIG_NAME = "emirax.toml"
SOURCE_SUFFIX = ".emx"
DEFAULT_RULES = ("rules",)
DEFAULT_VERSION = "0.0.0"
# Limits that fail closed: a project is rules written by people, not generated data.
MAX_FILES = 1000
MAX_FILE_BYTES = 1024 * 1024
MAX_CONFIG_BYTES = 64 * 1024

# Semver-ish: 1, 1.2, 1.2.3, with an optional -pre or +build suffix.
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){0,2}([-+][0-9A-Za-z.-]+)?$")
MAX_VERSION_LENGTH = 64
PACKAGE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# The keys emirax.toml may hold, table by table, with the type each value must have.
_TABLES = {"bundle": {"package": "a string", "version": "a string", "rules": "a list of strings"}}


@dataclass(frozen=True)
class Project:
    """One bundle's worth of sources. `files` are absolute and sorted by display name."""

    root: Path
    package: str | None
    version: str
    files: list[Path]
    config_file: Path | None = None

    def display_name(self, file: Path) -> str:
        """The name a file goes by in diagnostics and bundles: relative to the root, posix."""
        return file.relative_to(self.root).as_posix()


def load_project(path: Path | str, *, version: str | None = None) -> Project:
    """Find the sources of the project at `path` (a `.emx` file or a folder with emirax.toml).

    `version`, when given, overrides the version of emirax.toml (emirax compile --version V).
    """
    if version is not None:
        check_version(version, where="--version")
    given = Path(path)
    if not given.exists():
        raise ProjectError(f"{given}: no such file or folder")
    if given.is_file():
        return _one_file_project(given, version)
    if not given.is_dir():
        raise ProjectError(f"{given}: neither a file nor a folder")
    return _folder_project(given, version)


def read_sources(project: Project) -> dict[str, str]:
    """Read every file of `project`: display name -> text, in the order of `project.files`."""
    return {project.display_name(file): read_text(file, project.display_name(file)) for file in project.files}


def read_text(file: Path, name: str) -> str:
    """Read one source file as UTF-8 (a leading byte-order mark is dropped), at most MAX_FILE_BYTES."""
    try:
        with file.open("rb") as handle:
            # Read one byte past the limit: the file may have grown since load_project looked.
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ProjectError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ProjectError(_too_big(name))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ProjectError(
            f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def check_version(version: object, *, where: str) -> str:
    """Return `version` when it is a semver-ish string, else raise ProjectError naming `where`."""
    if not isinstance(version, str):
        raise ProjectError(f"{where}: version must be a string like \"1.0.0\", not {_type_name(version)}")
    if len(version) > MAX_VERSION_LENGTH or not VERSION_RE.match(version):
        raise ProjectError(
            f"{where}: version {version!r} is not a version like \"1.0.0\", \"2.1\" or \"1.0.0-rc.1\""
        )
    return version


# -- one file -----------------------------------------------------------------------------------


def _one_file_project(file: Path, version: str | None) -> Project:
    if file.suffix != SOURCE_SUFFIX:
        raise ProjectError(f"{file}: not an Emirax source (expected a {SOURCE_SUFFIX} file or a project folder)")
    file = file.resolve()
    _check_size(file, file.name)
    return Project(root=file.parent, package=None, version=version or DEFAULT_VERSION, files=[file])


# -- a folder -----------------------------------------------------------------------------------


def _folder_project(folder: Path, version: str | None) -> Project:
    root = folder.resolve()
    config_file = root / CONFIG_NAME
    if not config_file.is_file():
        raise ProjectError(
            f"{folder}: no {CONFIG_NAME} in this folder (a project folder needs one with a [bundle] "
            f"table; or pass a single {SOURCE_SUFFIX} file)"
        )
    # Messages name emirax.toml as the user reached it: "tenants/media/emirax.toml:3:9: ...".
    label = str(folder / CONFIG_NAME)
    table = _read_config(config_file, label)
    package = table.get("package")
    if package is not None and not PACKAGE_RE.match(package):
        raise ProjectError(f"{label}: bundle.package {package!r} is not a dotted name like \"media.encode\"")
    if version is None:
        if "version" not in table:
            raise ProjectError(
                f"{label}: bundle.version is missing (add version = \"1.0.0\" under [bundle], "
                "or pass --version)"
            )
        version = check_version(table["version"], where=f"{label}: bundle.version")
    elif "version" in table:
        check_version(table["version"], where=f"{label}: bundle.version")
    rules = table.get("rules", list(DEFAULT_RULES))
    files = _collect(root, rules, label)
    return Project(root=root, package=package, version=version, files=files, config_file=config_file)


def _read_config(config_file: Path, label: str) -> dict[str, Any]:
    """Parse emirax.toml and check its keys and types; return the [bundle] table."""
    try:
        data = config_file.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as exc:
        raise ProjectError(f"{label}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ProjectError(f"{label}: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProjectError(f"{label}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProjectError(_toml_message(exc, label)) from None
    _refuse_unknown(doc, _TABLES, where="", label=label)
    table = doc.get("bundle")
    if table is None:
        raise ProjectError(f"{label}: no [bundle] table (it holds version = \"1.0.0\" and the optional package and rules)")
    if not isinstance(table, dict):
        raise ProjectError(f"{label}: bundle must be a table ([bundle]), not {_type_name(table)}")
    _refuse_unknown(table, _TABLES["bundle"], where="bundle.", label=label)
    for key in ("package", "version"):
        if key in table and not isinstance(table[key], str):
            raise ProjectError(f"{label}: bundle.{key} must be a string, not {_type_name(table[key])}")
    rules = table.get("rules")
    if rules is not None:
        if not isinstance(rules, list) or not all(isinstance(item, str) for item in rules):
            raise ProjectError(
                f"{label}: bundle.rules must be a list of folder names like [\"rules\"], "
                f"not {_type_name(rules)}"
            )
        if not rules:
            raise ProjectError(f"{label}: bundle.rules is empty (name at least one folder, like [\"rules\"])")
    return table


def _toml_message(exc: tomllib.TOMLDecodeError, label: str) -> str:
    # tomllib says "Expected '=' after a key in a key/value pair (at line 3, column 9)".
    text = str(exc)
    found = re.search(r"\(at line (\d+), column (\d+)\)$", text)
    if found:
        reason = text[: found.start()].rstrip()
        return f"{label}:{found.group(1)}:{found.group(2)}: malformed TOML: {reason}"
    return f"{label}: malformed TOML: {text}"


def _refuse_unknown(table: dict[str, Any], known: dict[str, Any], *, where: str, label: str) -> None:
    for key in table:
        if key in known:
            continue
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f"did you mean '{where}{close[0]}'?" if close else "known keys: " + ", ".join(
            where + name for name in known
        )
        raise ProjectError(f"{label}: unknown key '{where}{key}' ({hint})")


# -- finding files ------------------------------------------------------------------------------


def _collect(root: Path, rules: list[str], label: str) -> list[Path]:
    """Every *.emx file under the rules folders, deduplicated, sorted by display name."""
    found: dict[str, Path] = {}
    seen_real: set[Path] = set()
    for entry in rules:
        folder = _rules_folder(root, entry, label)
        for file in _walk(root, folder, entry):
            name = file.relative_to(root).as_posix()
            real = file.resolve()
            # Overlapping folders (["rules", "rules/video"]) or two links to one file: count it once.
            if name in found or real in seen_real:
                continue
            seen_real.add(real)
            found[name] = file
            if len(found) > MAX_FILES:
                raise ProjectError(
                    f"{label}: more than {MAX_FILES} {SOURCE_SUFFIX} files under bundle.rules "
                    "(split the project into several packages)"
                )
    if not found:
        raise ProjectError(
            f"{label}: no {SOURCE_SUFFIX} files found under "
            + ", ".join(f"'{entry}/'" for entry in rules)
        )
    files = [found[name] for name in sorted(found)]
    for file in files:
        _check_size(file, file.relative_to(root).as_posix())
    return files


def _rules_folder(root: Path, entry: str, label: str) -> Path:
    where = f"{label}: bundle.rules entry {entry!r}"
    if not entry or entry.strip() != entry:
        raise ProjectError(f"{where} is not a folder name")
    posix, windows = PurePosixPath(entry), PureWindowsPath(entry)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or entry.startswith(("\\", "/")):
        raise ProjectError(f"{where} is an absolute path; name a folder inside the project")
    if ".." in posix.parts or ".." in windows.parts:
        raise ProjectError(f"{where} leaves the project folder ('..'); name a folder inside the project")
    folder = root / entry
    if not folder.exists():
        raise ProjectError(f"{where}: no such folder {folder}")
    if not _inside(folder.resolve(), root):
        raise ProjectError(f"{where} leads outside the project folder (through a symlink)")
    if not folder.is_dir():
        raise ProjectError(f"{where} is not a folder")
    return folder


def _walk(root: Path, folder: Path, entry: str) -> list[Path]:
    """The *.emx files under `folder`, following symlinks only while they stay inside `root`."""
    result: list[Path] = []
    visited: set[Path] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        real = current.resolve()
        if real in visited:  # a symlink loop, or two links to one folder
            continue
        visited.add(real)
        try:
            children = sorted(os.scandir(current), key=lambda item: item.name)
        except OSError as exc:
            raise ProjectError(f"{current.relative_to(root).as_posix()}: cannot list: {exc.strerror or exc}") from None
        for child in children:
            if child.name.startswith("."):  # editor swap and lock files, .git: never rules
                continue
            path = current / child.name
            if child.is_symlink() and not _inside(path.resolve(), root):
                raise ProjectError(
                    f"{path.relative_to(root).as_posix()}: a symlink leading outside the project folder "
                    f"(found under bundle.rules entry {entry!r})"
                )
            if child.is_dir():
                pending.append(path)
            elif child.is_file() and child.name.endswith(SOURCE_SUFFIX):
                result.append(path)
    return result


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _check_size(file: Path, name: str) -> None:
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise ProjectError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if size > MAX_FILE_BYTES:
        raise ProjectError(_too_big(name))


def _too_big(name: str) -> str:
    return f"{name}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB (the limit of one source file)"


def _type_name(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)
