"""The built wheel is a complete product: it installs into a fresh environment outside the
checkout, carries the grammar, and its `emirax check` works from any directory.

One module-scoped build and install (about 20 s with a warm pip cache) serves every test here.
Dependencies come from the package index; the fresh venv never sees this environment's packages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
GRAMMAR = ROOT / "grammar" / "emirax.lark"
WHEEL_GRAMMAR = "emirax/grammar/emirax.lark"

VALID = """\
package demo.hello

workflow Hello {
    fact Greeting(String name)
    fact Greeted(String text)

    rule 'greet' {
        match {
            g: Greeting()
            not Greeted()
        }
        action {
            insert Greeted(text: "hello ${g.name}")
        }
    }
}
"""

# Line 9 uses a fact type that is never declared.
BROKEN = """\
package demo.broken

workflow Broken {
    fact Greeting(String name)

    rule 'greet' {
        match {
            g: Greeting()
            m: Missing()
        }
        action {
            log "never"
        }
    }
}
"""


def _run(cmd: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that would point Python at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, ROOT],
                  cwd=ROOT)
    assert result.returncode == 0, f"wheel build failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(out.glob("emirax-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (outside the checkout, no system site-packages) with the wheel installed."""
    env_dir = tmp_path_factory.mktemp("venv")
    assert ROOT not in env_dir.parents
    # No pip inside: this environment's pip installs into it (`pip --python`), which saves the
    # seconds ensurepip takes.
    venv.EnvBuilder(with_pip=False, system_site_packages=False, symlinks=True).create(env_dir)
    result = _run([sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python", "install",
                   "--quiet", "--disable-pip-version-check", wheel],
                  cwd=env_dir, env=_clean_env())
    assert result.returncode == 0, f"installing the wheel failed:\n{result.stdout}\n{result.stderr}"
    return env_dir


def test_wheel_carries_the_grammar_byte_for_byte(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert WHEEL_GRAMMAR in names
        assert zf.read(WHEEL_GRAMMAR) == GRAMMAR.read_bytes()
    assert "emirax/__init__.py" in names
    assert "server/__init__.py" in names
    assert not any(n.startswith(("tests/", "grammar/", "bench/", "tenants/")) for n in names)


def test_installed_package_comes_from_the_venv_not_the_checkout(installed: Path,
                                                                tmp_path: Path) -> None:
    code = ("import emirax, importlib.resources as r; print(emirax.__file__); "
            "print((r.files('emirax') / 'grammar' / 'emirax.lark').is_file())")
    result = _run([installed / "bin" / "python", "-c", code], cwd=tmp_path, env=_clean_env())
    assert result.returncode == 0, result.stderr
    location, has_grammar = result.stdout.split()
    assert Path(location).resolve().is_relative_to(installed.resolve())
    assert has_grammar == "True"


def test_installed_emirax_checks_a_valid_file(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "hello.emx").write_text(VALID)
    result = _run([installed / "bin" / "emirax", "check", "hello.emx"], cwd=tmp_path,
                  env=_clean_env(), timeout=60)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr


def test_installed_emirax_reports_a_broken_file_with_its_position(installed: Path,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "broken.emx").write_text(BROKEN)
    result = _run([installed / "bin" / "emirax", "check", "broken.emx"], cwd=tmp_path,
                  env=_clean_env(), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert re.search(r"broken\.emx:9:\d+", output), output
    assert "Missing" in output
    assert "Traceback" not in output
