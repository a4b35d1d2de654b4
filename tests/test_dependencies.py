"""The libraries livepush reaches into stay inside the ranges pyproject.toml declares.

livepush subclasses uvicorn's protocols, drives websockets' sans-I/O protocol (and sets
its parser attributes), parses requests with httptools itself, and builds on Starlette
and redis-py; pyproject.toml bounds each of them to the release lines the suite has run
on. These tests fail, naming the package, its version and the declared range, when the
installed packages or the locks in requirements/ leave those ranges, and when the locks
or the installed package's metadata no longer match pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"serve": ROOT / "requirements" / "serve.txt", "test": ROOT / "requirements" / "test.txt"}
GUARDED = ("uvicorn", "websockets", "starlette", "redis", "httptools")
UPPER_BOUND_OPERATORS = {"<", "<=", "==", "~=", "==="}


def installed_requirements(extra: str) -> dict[NormalizedName, Requirement]:
    """livepush's requirements as installed (its own metadata): runtime (extra ""), or
    those that only the given extra adds."""
    found: dict[NormalizedName, Requirement] = {}
    for line in requires("livepush") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": ""}):
            wanted = extra == ""
        else:
            wanted = extra != "" and marker.evaluate({"extra": extra})
        if wanted:
            found[canonicalize_name(requirement.name)] = requirement
    return found


def declared_range(name: str) -> SpecifierSet:
    requirement = installed_requirements("").get(canonicalize_name(name))
    assert requirement is not None, f"livepush does not declare {name} as a dependency"
    return requirement.specifier


def pins(lock: Path) -> dict[NormalizedName, Version]:
    text = lock.read_text()
    return {
        canonicalize_name(m[1]): Version(m[2])
        for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)==([^\s;\\]+)", text, re.MULTILINE)
    }


def out_of_range(name: str, found: Version, tested: SpecifierSet, where: str) -> str | None:
    """The complaint about `found` (from `where`) lying outside `tested`, if it does."""
    if tested.contains(found, prereleases=True):
        return None
    return (
        f"{name} {found} ({where}) lies outside the tested range {name}{tested} that "
        "pyproject.toml declares: run the suite on it with `./dev upgrade` and move the "
        "bound, or install the locked version with `./dev test`"
    )


def test_out_of_range_names_package_version_and_range() -> None:
    tested = SpecifierSet(">=14,<17.5")
    assert out_of_range("websockets", Version("17.4.1"), tested, "installed") is None
    assert out_of_range("websockets", Version("17.5"), tested, "installed") == (
        "websockets 17.5 (installed) lies outside the tested range websockets<17.5,>=14 "
        "that pyproject.toml declares: run the suite on it with `./dev upgrade` and move "
        "the bound, or install the locked version with `./dev test`"
    )
    assert out_of_range("websockets", Version("13.1"), tested, "installed") is not None


@pytest.mark.parametrize("name", GUARDED)
def test_declared_range_has_an_upper_bound(name: str) -> None:
    tested = declared_range(name)
    assert any(spec.operator in UPPER_BOUND_OPERATORS for spec in tested), (
        f"pyproject.toml declares {name}{tested} with no upper bound: livepush reaches into "
        f"{name}'s internals, so its range must end before the next untested release line"
    )


@pytest.mark.parametrize("name", GUARDED)
def test_installed_version_is_in_declared_range(name: str) -> None:
    try:
        found = Version(version(name))
    except PackageNotFoundError:
        pytest.fail(f"{name} is not installed (pyproject.toml declares {declared_range(name)})")
    assert (problem := out_of_range(name, found, declared_range(name), "installed")) is None, (
        problem
    )


@pytest.mark.parametrize("lock", sorted(LOCKS))
@pytest.mark.parametrize("name", GUARDED)
def test_lock_pins_version_in_declared_range(name: str, lock: str) -> None:
    path = LOCKS[lock]
    pinned = pins(path).get(canonicalize_name(name))
    assert pinned is not None, f"requirements/{path.name} pins no version of {name}"
    where = f"pinned in requirements/{path.name}"
    assert (problem := out_of_range(name, pinned, declared_range(name), where)) is None, problem


@pytest.mark.parametrize(("lock", "extras"), [("serve", [""]), ("test", ["", "dev"])])
def test_lock_satisfies_every_declared_requirement(lock: str, extras: list[str]) -> None:
    path = LOCKS[lock]
    pinned = pins(path)
    problems: list[str] = []
    for extra in extras:
        for name, requirement in installed_requirements(extra).items():
            found, wanted = pinned.get(name), f"{name}{requirement.specifier}"
            if found is None:
                problems.append(f"{wanted} is not in requirements/{path.name}")
            elif not requirement.specifier.contains(found, prereleases=True):
                problems.append(f"{wanted}: requirements/{path.name} pins {found}")
    assert not problems, "the lock does not match pyproject.toml (run `./dev lock`): " + "; ".join(
        problems
    )


def test_serve_lock_is_test_lock_subset_at_same_versions() -> None:
    serve, test = pins(LOCKS["serve"]), pins(LOCKS["test"])
    differ = {
        f"{name}: serve.txt {pinned}, test.txt {test.get(name)}"
        for name, pinned in serve.items()
        if test.get(name) != pinned
    }
    assert not differ, f"requirements/serve.txt strays from test.txt: {sorted(differ)}"


def test_installed_packages_are_the_test_lock() -> None:
    differ: list[str] = []
    for name, pinned in pins(LOCKS["test"]).items():
        try:
            found = Version(version(name))
        except PackageNotFoundError:
            differ.append(f"{name} not installed (locked: {pinned})")
            continue
        if found != pinned:
            differ.append(f"{name} {found} (locked: {pinned})")
    assert not differ, (
        "installed packages differ from requirements/test.txt (`./dev test` installs it): "
        + ", ".join(differ)
    )


def test_installed_metadata_matches_pyproject() -> None:
    """The ranges above come from the installed metadata; it must be pyproject.toml's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    for extra, lines in groups.items():
        declared = {
            canonicalize_name(r.name): (r.extras, r.specifier) for r in map(Requirement, lines)
        }
        installed = {
            name: (r.extras, r.specifier) for name, r in installed_requirements(extra).items()
        }
        assert installed == declared, (
            f"livepush's installed metadata ({extra or 'runtime'} requirements) is not "
            "pyproject.toml's: reinstall with `./dev test`"
        )
