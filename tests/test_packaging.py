"""migrations/ sits at the top level but must ship in the wheel: build it, install it, run it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from layerindex.index import database

ROOT = Path(__file__).resolve().parent.parent


def test_built_wheel_carries_migrations_and_creates_a_database(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("layerindex-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "layerindex/migrations/env.py" in names
    assert "layerindex/migrations/versions/0001_initial_schema.py" in names
    assert "layerindex/migrations/script.py.mako" in names
    assert "layerindex/data/images.txt" in names  # the default list of `layerindex crawl`
    assert any(n.startswith("layerindex/layer/_tarscan.") and n.endswith(".so") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies come from the environment running the tests (a virtual environment as the
    # README makes, whose packages --system-site-packages would not see), by path: its .pth
    # files are not read from there, so the editable install of the source tree stays out.
    (site_packages,) = (venv / "lib").glob("python*/site-packages")
    outer = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site_packages / "test-dependencies.pth").write_text("\n".join(sorted(outer)) + "\n")
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", wheel],
        check=True,
        capture_output=True,
    )
    db = tmp_path / "index.db"
    result = subprocess.run(
        [venv / "bin" / "layerindex", "--db", f"sqlite:///{db}", "db", "upgrade"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # not the source tree: the installed wheel must stand alone
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"upgraded empty database -> {database.head_revision()}\n"

    def installed(code: str) -> str:
        """What the wheel's Python prints for ``code``, run outside the source tree."""
        return subprocess.run(
            [venv / "bin" / "python", "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        ).stdout

    where = installed("import layerindex.migrations as m; print(m.__file__)")
    assert where.startswith(str(venv))
    fast_path = installed("import layerindex.layer.walker as w; print(w._scan)")
    assert fast_path == "<built-in function scan>\n"
