"""The built wheel installs only the mailman_mta package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_only_mailman_mta(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info into the
    # tree it builds, and the checkout must stay as git left it.
    source = tmp_path / "source"
    built_before = (ROOT / "build").exists()
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", "benchmarks"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    assert (ROOT / "build").exists() == built_before, "building the wheel wrote build/ into the checkout"
    (wheel,) = tmp_path.glob("mailman_mta-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"mailman_mta", wheel.name.split("-py3")[0] + ".dist-info"}
    for expected in (
        "mailman_mta/plugins/devmode.py",
        "mailman_mta/schema/schema.cfg",
        "mailman_mta/testing/pytest_plugin.py",
    ):
        assert expected in names
    entry_points = zipfile.ZipFile(wheel).read(wheel.name.split("-py3")[0] + ".dist-info/entry_points.txt").decode()
    assert "mailman_mta = mailman_mta.testing.pytest_plugin" in entry_points
    assert "mailman-mta = mailman_mta.cli:main" in entry_points
