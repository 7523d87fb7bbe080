"""What users install: the sdist and the wheel hold the whole tree, and the installed wheel works.

Every other test imports mailman_mta from the checkout, which hides a
module the build leaves out (it once left out mailman_mta.integrations,
and a Mailman site's out runner crashed on it).  These tests look at the
built distributions themselves, and run the wheel installed, not
editable, in an environment of its own, from a folder outside the
checkout.
"""

from __future__ import annotations

import subprocess
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Folder of the tree -> the package it installs as.
INSTALLED_AS = {"mailman_mta": "mailman_mta", "plugins": "mailman_mta/plugins", "schema": "mailman_mta/schema"}

#: Modules that need a framework the plain environment lacks, and where they run installed.
NEEDS_A_HOST = {
    "mailman_mta.integrations.mailman": "GNU Mailman (tests/test_mailman.py, tests/test_mailman_site.py)",
    "mailman_mta.integrations.django": "Django (tests/test_django_suite.py)",
    "mailman_mta.integrations.celery": "Celery (tests/test_celery.py, whose workers run from the wheel)",
    "mailman_mta.integrations.django_celery": "Django and Celery (tests/test_celery.py)",
    "mailman_mta.testing.pytest_plugin": "pytest, which loads it through the pytest11 entry point",
}


def tree_files() -> dict[str, str]:
    """Each module and data file of the tree -> where the wheel must hold it."""
    found = {}
    for folder, package in INSTALLED_AS.items():
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            data = (folder == "schema" and path.suffix == ".cfg") or path.relative_to(
                ROOT
            ).as_posix() == "mailman_mta/py.typed"
            if path.suffix == ".py" or data:
                relative = path.relative_to(ROOT / folder).as_posix()
                found[f"{folder}/{relative}"] = f"{package}/{relative}"
    return found


def test_the_tree_has_the_files_this_test_relies_on():
    files = tree_files()
    for expected in (
        "mailman_mta/integrations/django.py",
        "plugins/devmode.py",
        "schema/schema.cfg",
        "mailman_mta/py.typed",
    ):
        assert expected in files


def test_the_sdist_holds_every_module_of_the_tree(distributions):
    with tarfile.open(distributions.sdist) as sdist:
        names = sdist.getnames()
    top = names[0].split("/")[0]
    inside = {name.partition("/")[2] for name in names}
    missing = sorted(set(tree_files()) - inside)
    assert missing == [], f"{distributions.sdist.name} lacks {missing}"
    assert {"setup.py", "setup.cfg", "pyproject.toml", "README.md"} <= inside, top


def test_the_wheel_holds_every_module_of_the_tree_and_nothing_else(distributions):
    wheel = distributions.wheel
    names = zipfile.ZipFile(wheel).namelist()
    info = wheel.name.split("-py3")[0] + ".dist-info"
    assert {name.split("/")[0] for name in names} == {"mailman_mta", info}
    expected = set(tree_files().values())
    assert sorted(expected - set(names)) == []
    assert sorted(name for name in names if not name.startswith(info) and name not in expected) == []
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "mailman_mta = mailman_mta.testing.pytest_plugin" in entry_points
    assert "mailman-mta = mailman_mta.cli:main" in entry_points


def test_the_installed_wheel_imports_every_module_and_runs_the_main_job(fresh_environment, tmp_path):
    python = fresh_environment
    modules = sorted(
        {
            path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            for path in tree_files().values()
            if path.endswith(".py")
        }
        - set(NEEDS_A_HOST)
    )
    script = (
        "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint(len(sys.argv) - 1)"
    )
    imported = subprocess.run(
        [str(python), "-W", "error", "-c", script, *modules], capture_output=True, text=True, cwd=tmp_path
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert int(imported.stdout) == len(modules) >= 40
    for module, host in NEEDS_A_HOST.items():
        missing = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, cwd=tmp_path)
        # Present in the wheel, and failing only for want of its framework.
        assert "ModuleNotFoundError: No module named 'mailman_mta" not in missing.stderr, (module, host)
    command = python.parent / "mailman-mta"
    demo = subprocess.run(
        [str(command), "demo", "--posts", "20", "--members", "10"], capture_output=True, text=True, cwd=tmp_path
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "200 accepted, 0 refused; 200 arrived" in demo.stdout
    plugins = subprocess.run([str(command), "plugins"], capture_output=True, text=True, cwd=tmp_path)
    assert plugins.returncode == 0 and "deliverylog" in plugins.stdout
