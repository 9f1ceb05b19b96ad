"""Projects: which files make a bundle, and one clear ProjectError for every way a project is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emirax import project as P
from emirax.errors import ProjectError
from emirax.project import Project, load_project, read_sources

RULE = "package media.encode\n"


def make(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write `files` (relative name -> text or bytes) under `root` and return `root`."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def toml(body: str = 'version = "1.0.0"') -> str:
    return "[bundle]\n" + body + "\n"


def refused(path: Path | str, *fragments: str, version: str | None = None) -> str:
    with pytest.raises(ProjectError) as caught:
        load_project(path, version=version)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ── happy paths ────────────────────────────────────────────────────────────────────────────────


def test_one_file_is_a_project(tmp_path: Path) -> None:
    file = make(tmp_path, {"video.emx": RULE}) / "video.emx"
    project = load_project(file)
    assert project == Project(root=tmp_path.resolve(), package=None, version="0.0.0",
                              files=[file.resolve()], config_file=None)
    assert read_sources(project) == {"video.emx": RULE}
    assert load_project(str(file), version="2.0.1").version == "2.0.1"


def test_a_folder_with_emirax_toml(tmp_path: Path) -> None:
    make(tmp_path, {
        "emirax.toml": toml('package = "media.encode"\nversion = "1.2.3"'),
        "rules/video.emx": RULE,
        "rules/audio.emx": RULE + "// audio\n",
        "README.md": "not a rule",
        "rules/notes.txt": "not a rule either",
    })
    project = load_project(tmp_path)
    root = tmp_path.resolve()
    assert project.root == root
    assert project.package == "media.encode"
    assert project.version == "1.2.3"
    assert project.config_file == root / "emirax.toml"
    assert project.files == [root / "rules/audio.emx", root / "rules/video.emx"]
    assert all(f.is_absolute() for f in project.files)
    assert read_sources(project) == {"rules/audio.emx": RULE + "// audio\n", "rules/video.emx": RULE}


def test_rules_are_found_recursively_and_sorted(tmp_path: Path) -> None:
    make(tmp_path, {
        "emirax.toml": toml(),
        "rules/z.emx": RULE,
        "rules/a/deep/er/x.emx": RULE,
        "rules/b/y.emx": RULE,
        "rules/.hidden/skip.emx": RULE,     # hidden folders and files are never rules
        "rules/.#lock.emx": RULE,
    })
    names = list(read_sources(load_project(tmp_path)))
    assert names == ["rules/a/deep/er/x.emx", "rules/b/y.emx", "rules/z.emx"]


def test_a_custom_rules_list(tmp_path: Path) -> None:
    make(tmp_path, {
        "emirax.toml": toml('version = "3"\nrules = ["src", "more/deep", "src/sub"]'),
        "src/a.emx": RULE,
        "src/sub/b.emx": RULE,              # listed twice (src and src/sub): counted once
        "more/deep/c.emx": RULE,
        "rules/ignored.emx": RULE,          # not listed: not part of the bundle
    })
    project = load_project(tmp_path)
    assert [project.display_name(f) for f in project.files] == ["more/deep/c.emx", "src/a.emx", "src/sub/b.emx"]
    assert project.package is None
    assert project.version == "3"


def test_the_version_argument_overrides_emirax_toml(tmp_path: Path) -> None:
    make(tmp_path, {"emirax.toml": toml(), "rules/a.emx": RULE})
    assert load_project(tmp_path, version="9.9.9-rc.1").version == "9.9.9-rc.1"
    # and stands in for a missing version
    make(tmp_path, {"emirax.toml": "[bundle]\n"})
    assert load_project(tmp_path, version="1.0").version == "1.0"


def test_a_symlink_inside_the_project_is_followed(tmp_path: Path) -> None:
    make(tmp_path, {"emirax.toml": toml(), "shared/common.emx": RULE, "rules/a.emx": RULE})
    (tmp_path / "rules" / "shared").symlink_to(tmp_path / "shared")
    assert list(read_sources(load_project(tmp_path))) == ["rules/a.emx", "rules/shared/common.emx"]


def test_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    make(tmp_path, {"a.emx": b"\xef\xbb\xbf" + RULE.encode()})
    assert read_sources(load_project(tmp_path / "a.emx")) == {"a.emx": RULE}


@pytest.mark.parametrize("version", ["1", "1.2", "1.2.3", "1.0.0-rc.1", "2.0.0+build.5", "10.20.30-alpha-2"])
def test_good_versions(tmp_path: Path, version: str) -> None:
    make(tmp_path, {"emirax.toml": toml(f'version = "{version}"'), "rules/a.emx": RULE})
    assert load_project(tmp_path).version == version


# ── refusals ───────────────────────────────────────────────────────────────────────────────────


def test_a_missing_path(tmp_path: Path) -> None:
    refused(tmp_path / "nope", "no such file or folder")


def test_a_file_that_is_not_emx(tmp_path: Path) -> None:
    make(tmp_path, {"video.txt": RULE})
    refused(tmp_path / "video.txt", "not an Emirax source")


def test_a_folder_without_emirax_toml(tmp_path: Path) -> None:
    make(tmp_path, {"rules/a.emx": RULE})
    refused(tmp_path, "no emirax.toml in this folder")


@pytest.mark.parametrize(("text", "fragment"), [
    ('[bundle]\nversion = "1.0.0"\npackage = \n', "emirax.toml:3:11: malformed TOML"),
    ('[bundle\nversion = "1"\n', "emirax.toml:1:"),
    ('[bundle]\nversion = "1"\nversion = "2"\n', "emirax.toml:3:"),
])
def test_malformed_toml_names_line_and_column(tmp_path: Path, text: str, fragment: str) -> None:
    make(tmp_path, {"emirax.toml": text, "rules/a.emx": RULE})
    refused(tmp_path, fragment)


def test_emirax_toml_that_is_not_utf8(tmp_path: Path) -> None:
    make(tmp_path, {"emirax.toml": b'[bundle]\nversion = "1\xff"\n', "rules/a.emx": RULE})
    refused(tmp_path, "emirax.toml: not UTF-8")


@pytest.mark.parametrize(("text", "fragment"), [
    (toml('version = "1"\npakage = "a.b"'), "unknown key 'bundle.pakage' (did you mean 'bundle.package'?)"),
    (toml('version = "1"\nrule = ["rules"]'), "did you mean 'bundle.rules'?"),
    (toml('version = "1"\nzzz = 1'), "unknown key 'bundle.zzz' (known keys: bundle.package, bundle.version, bundle.rules)"),
    ('[bundel]\nversion = "1"\n', "unknown key 'bundel' (did you mean 'bundle'?)"),
    ('name = "x"\n' + toml(), "unknown key 'name'"),
])
def test_unknown_keys_suggest_the_right_one(tmp_path: Path, text: str, fragment: str) -> None:
    make(tmp_path, {"emirax.toml": text, "rules/a.emx": RULE})
    refused(tmp_path, fragment)


@pytest.mark.parametrize(("text", "fragment"), [
    (toml("version = 1"), "bundle.version must be a string, not an integer"),
    (toml('version = "1"\npackage = 3'), "bundle.package must be a string, not an integer"),
    (toml('version = "1"\nrules = "rules"'), "bundle.rules must be a list of folder names"),
    (toml('version = "1"\nrules = ["rules", 2]'), "bundle.rules must be a list"),
    (toml('version = "1"\nrules = []'), "bundle.rules is empty"),
    ('bundle = 1\n', "bundle must be a table"),
    ("", "no [bundle] table"),
    ("[bundle]\n", "bundle.version is missing"),
    (toml('version = "one"'), "version 'one' is not a version"),
    (toml('version = "1.2.3.4"'), "is not a version"),
    (toml('version = "1"\npackage = "media-encode"'), "is not a dotted name"),
])
def test_wrong_types_and_values(tmp_path: Path, text: str, fragment: str) -> None:
    make(tmp_path, {"emirax.toml": text, "rules/a.emx": RULE})
    refused(tmp_path, "emirax.toml", fragment)


def test_a_bad_version_argument(tmp_path: Path) -> None:
    make(tmp_path, {"a.emx": RULE})
    refused(tmp_path / "a.emx", "--version: version 'latest' is not a version", version="latest")


@pytest.mark.parametrize(("entry", "fragment"), [
    ("../outside", "leaves the project folder ('..')"),
    ("rules/../../outside", "leaves the project folder"),
    ("/etc", "is an absolute path"),
    ("C:\\rules", "is an absolute path"),
    ("missing", "no such folder"),
    ("emirax.toml", "is not a folder"),
    ("", "is not a folder name"),
])
def test_rules_folders_must_stay_inside_the_project(tmp_path: Path, entry: str, fragment: str) -> None:
    root = tmp_path / "project"
    make(tmp_path, {"outside/x.emx": RULE})
    # A TOML literal string ('...') takes the entry as written, backslashes included.
    make(root, {"emirax.toml": toml(f"version = '1'\nrules = ['{entry}']"), "rules/a.emx": RULE})
    refused(root, "bundle.rules entry", fragment)


def test_a_rules_folder_symlinked_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "project"
    make(tmp_path, {"outside/x.emx": RULE})
    make(root, {"emirax.toml": toml()})
    (root / "rules").symlink_to(tmp_path / "outside")
    refused(root, "leads outside the project folder")


def test_a_symlink_inside_rules_leading_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "project"
    make(tmp_path, {"outside/secret.emx": RULE, "outside/dir/x.emx": RULE})
    make(root, {"emirax.toml": toml(), "rules/a.emx": RULE})
    (root / "rules" / "secret.emx").symlink_to(tmp_path / "outside" / "secret.emx")
    refused(root, "rules/secret.emx: a symlink leading outside the project folder")
    (root / "rules" / "secret.emx").unlink()
    (root / "rules" / "dir").symlink_to(tmp_path / "outside" / "dir")
    refused(root, "rules/dir: a symlink leading outside")


def test_a_symlink_loop_terminates(tmp_path: Path) -> None:
    make(tmp_path, {"emirax.toml": toml(), "rules/a.emx": RULE})
    (tmp_path / "rules" / "loop").symlink_to(tmp_path / "rules")
    assert list(read_sources(load_project(tmp_path))) == ["rules/a.emx"]


def test_no_emx_files(tmp_path: Path) -> None:
    make(tmp_path, {"emirax.toml": toml('version = "1"\nrules = ["rules", "more"]'),
                    "rules/readme.txt": "", "more/x.emxb": ""})
    refused(tmp_path, "no .emx files found under 'rules/', 'more/'")


def test_too_many_files(tmp_path: Path) -> None:
    make(tmp_path, {"emirax.toml": toml()})
    folder = tmp_path / "rules"
    folder.mkdir()
    for i in range(P.MAX_FILES + 1):
        (folder / f"f{i:04}.emx").write_text(RULE)
    refused(tmp_path, f"more than {P.MAX_FILES} .emx files")


def test_a_file_over_the_size_limit(tmp_path: Path) -> None:
    big = "// " + "x" * P.MAX_FILE_BYTES + "\n"
    make(tmp_path, {"emirax.toml": toml(), "rules/big.emx": big, "solo.emx": big})
    refused(tmp_path, "rules/big.emx: larger than 1 MiB")
    refused(tmp_path / "solo.emx", "solo.emx: larger than 1 MiB")


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    make(tmp_path, {"emirax.toml": toml(), "rules/ok.emx": RULE,
                    "rules/latin1.emx": "package a\n// caf\xe9\n".encode("latin-1")})
    project = load_project(tmp_path)
    with pytest.raises(ProjectError, match=r"rules/latin1\.emx: not UTF-8 text \(byte 0xe9 at line 2"):
        read_sources(project)


def test_a_file_that_grew_past_the_limit_is_refused_when_read(tmp_path: Path) -> None:
    make(tmp_path, {"a.emx": RULE})
    project = load_project(tmp_path / "a.emx")
    with open(tmp_path / "a.emx", "a", encoding="utf-8") as handle:
        handle.write("x" * P.MAX_FILE_BYTES)
    with pytest.raises(ProjectError, match="larger than 1 MiB"):
        read_sources(project)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file(tmp_path: Path) -> None:
    make(tmp_path, {"a.emx": RULE})
    (tmp_path / "a.emx").chmod(0)
    project = load_project(tmp_path / "a.emx")
    with pytest.raises(ProjectError, match="a.emx: cannot read"):
        read_sources(project)
