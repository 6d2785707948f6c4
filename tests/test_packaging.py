"""The wheel the Dockerfile installs (`pip install .`, not editable) carries every module and data file."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)  # fmt: skip
    [wheel] = tmp_path.glob("examhub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    records = ROOT / "loadtest" / "results"  # benchmark results kept in the repository, not shipped
    expected = {
        str(p.relative_to(ROOT))
        for folder in ("server", "sessions", "storage", "loadtest")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".lua", ".sql", ".json", ".html", ".css", ".js")
        and "__pycache__" not in p.parts
        and not p.is_relative_to(records)
    }
    assert any(name.startswith("server/static/") for name in expected)  # the browser pages are checked too
    assert expected <= names, sorted(expected - names)
