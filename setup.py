"""Finds the packages to install; every other piece of metadata is in setup.cfg.

``plugins/`` and ``schema/`` are folders at the top of the repository that
install inside the package, as ``mailman_mta.plugins`` and
``mailman_mta.schema``, so that installing never creates a top-level
``plugins`` module.  setup.cfg's ``find:`` cannot follow such a mapping,
and a hand-kept list forgets new packages (it once left out
``mailman_mta.integrations``), so the packages are found here: every
package under ``mailman_mta/`` and under each mapped folder.
tests/test_packaging.py checks that the sdist and the wheel hold every
module of the tree.
"""

from setuptools import find_packages, setup

#: Installed package -> the folder it comes from.
MAPPED = {"mailman_mta.plugins": "plugins", "mailman_mta.schema": "schema"}

packages = find_packages(include=["mailman_mta", "mailman_mta.*"])
for package, folder in MAPPED.items():
    packages += [package, *(f"{package}.{sub}" for sub in find_packages(folder))]

setup(packages=packages, package_dir={"mailman_mta": "mailman_mta", **MAPPED})
