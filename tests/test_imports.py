"""Every module imports on its own, with warnings as errors (as pytest's own suite checks).

An import cycle, or a module that only works because another was imported
first, shows up here rather than in a user's program.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mailman_mta
import mailman_mta.plugins
import mailman_mta.schema

#: Modules that need an application we do not install here, and where they are tested.
ELSEWHERE = {
    "mailman_mta.integrations.mailman": "needs GNU Mailman; imported in its own environment by tests/test_mailman.py",
}


def modules() -> list[str]:
    """Every module of the package, including the folders installed into it (plugins/, schema/)."""
    found = {"mailman_mta"}
    for package in (mailman_mta, mailman_mta.plugins, mailman_mta.schema):
        found.add(package.__name__)
        found.update(info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."))
    return sorted(found - set(ELSEWHERE))


def _import_alone(module: str) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    return module, done.stderr.strip().splitlines()[-1] if done.returncode else ""


def test_every_module_imports_alone_with_warnings_as_errors():
    names = modules()
    assert {
        "mailman_mta.cli",
        "mailman_mta.plugins.dkim",
        "mailman_mta.schema",
        "mailman_mta.testing.server",
        "mailman_mta.integrations.django",
    } <= set(names)
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = {module: error for module, error in pool.map(_import_alone, names) if error}
    assert failures == {}


def test_the_command_line_does_not_load_the_test_servers_until_asked():
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "import sys, mailman_mta.cli; print('mailman_mta.testing' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_the_public_api_is_importable_from_the_package():
    """``from mailman_mta import ...`` gives the same objects as their modules; __all__ lists them."""
    import importlib

    import mailman_mta

    lazy = mailman_mta._EXPORTS
    assert set(mailman_mta.__all__) == {"PROJECT_NAME", "__version__", "hookimpl", *lazy}
    for name, module in lazy.items():
        assert getattr(mailman_mta, name) is getattr(importlib.import_module(f"mailman_mta.{module}"), name)
    assert set(mailman_mta.__all__) <= set(dir(mailman_mta))
    from mailman_mta import Configuration, Connection, Delivery, hookimpl  # noqa: F401 (the README's line)


def test_importing_the_package_imports_none_of_it():
    """Plugins import mailman_mta for hookimpl; that must not load the configuration."""
    import subprocess
    import sys

    code = "import sys, mailman_mta; print(sorted(m for m in sys.modules if m.startswith('mailman_mta.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_smtp_layer_keeps_its_old_module_names():
    """The modules moved into `mailman_mta.smtp` keep their old names, as the same module objects."""
    for name in ("replies", "transaction", "transport", "esmtp", "tls"):
        moved = importlib.import_module(f"mailman_mta.smtp.{name}")
        assert importlib.import_module(f"mailman_mta.{name}") is moved
        assert getattr(importlib.import_module("mailman_mta"), name) is moved
