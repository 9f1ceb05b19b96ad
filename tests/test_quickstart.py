"""The README's quickstart (`make quickstart`, `make run`'s last part) runs as a new user runs it:
tenants/media-encoding/quickstart.sh starts the server on the embedded SQLite, creates a tenant,
uploads the bundle, starts two runners, starts the video workflow, watches it to the end and
prints its trace, then stops what it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from serverkit import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_quickstart_runs_the_video_workflow_as_a_service(tmp_path: Path) -> None:
    home = tmp_path / "quickstart"
    port = free_port()
    env = {**os.environ, "PORT": str(port), "QUICKSTART_HOME": str(home),
           "EMIRAX": str(Path(sys.executable).parent / "emirax"), "PYTHON": sys.executable,
           "NO_COLOR": "1", "COLUMNS": "200"}
    env = {k: v for k, v in env.items() if k not in ("EMIRAX_TOKEN", "EMIRAX_ADMIN_TOKEN",
                                                      "EMIRAX_SERVER", "EMIRAX_DATABASE_URL")}
    proc = subprocess.run(["bash", str(ROOT / "tenants" / "media-encoding" / "quickstart.sh")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    for step in ("1. the server", "2. a tenant", "3. compile", "4. two function runners",
                 "5. start the video workflow", "6. watch it", "7. its trace"):
        assert step in out, out
    assert "status    completed" in proc.stdout and '"chunks": 31' in proc.stdout, proc.stdout
    ran = re.search(r"runner-1 ran (\d+) invocations, runner-2 (\d+)", proc.stdout)
    assert ran and int(ran[1]) + int(ran[2]) == 35, proc.stdout  # split, 31 encodes, assemble, index, grab
    assert (home / "emirax.db").is_file()  # the embedded SQLite
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--port {port}" not in ps  # the server it started has stopped
