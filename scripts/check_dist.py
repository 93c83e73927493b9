"""Check a built sdist and wheel: `python scripts/check_dist.py DIST_DIR` (run by check-dist).

DIST_DIR holds the one sdist and the one wheel `python -m build` made (the wheel built from the
sdist, so the sdist is known to rebuild). The checks:

- the wheel is pure Python (`py3-none-any`, purelib) and holds the `inferencesh` package, its
  `py.typed` marker and its dist-info, nothing else (no tests, scripts, benchmarks, examples,
  bytecode);
- its metadata is valid, and its version is `pyproject.toml`'s, the installed
  `inferencesh.__version__`, and sorts above the official client's 0.x line;
- the sdist has the same package files plus what a rebuild, the tests and the docs need;
- the wheel installs (into a throwaway folder, without dependencies) and its modules import from
  there, and its `inferencesh` command answers `--version` (each child process within
  `RUN_TIMEOUT` seconds);
- docs/index.md names every section of the README.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.metadata import Metadata
from packaging.version import Version

import inferencesh

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "inferencesh"
# The official client's 0.x line (0.36.0 is the release tests/test_official_client.py runs):
# this package's version sorts above all of it, so an upgrade never swaps one for the other.
OFFICIAL = Version("0.36.0")
# In the wheel, under the package, files that must be there.
WHEEL_REQUIRED = {
    "inferencesh/__init__.py",
    "inferencesh/py.typed",
    "inferencesh/local/__init__.py",
    "inferencesh/progress.py",
    "inferencesh/sse.py",
    "inferencesh/cli.py",
}
# In the sdist, next to the package: what a rebuild, the test command and the docs need.
SDIST_REQUIRED = {
    "pyproject.toml",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "PKG-INFO",
    "mkdocs.yml",
    "docs/index.md",
    "docs/reference.md",
    "scripts/test",
    "scripts/check-dist",
    "scripts/check_dist.py",
    "tests/conftest.py",
}
# Never shipped anywhere (path parts).
NEVER = {"__pycache__", ".venv", ".git", ".official", ".mypy_cache", ".pytest_cache"}
# Never in the wheel, even inside the package (path parts).
NOT_IN_WHEEL = {"tests", "scripts", "benchmarks", "examples", "docs"}
PUBLIC_MODULES = ["inferencesh", "inferencesh.local", "inferencesh.progress", "inferencesh.sse"]
# Seconds each child process (pip installing the wheel, a Python importing it) may take: far
# more than they need, so only a hang reaches it.
RUN_TIMEOUT = 120

problems: list[str] = []


def check(ok: object, problem: str) -> None:
    if not ok:
        problems.append(problem)


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        version = tomllib.load(file)["project"]["version"]
    assert isinstance(version, str)
    return version


def check_wheel(wheel: Path, version: str) -> set[str]:
    check(wheel.name == f"{PACKAGE}-{version}-py3-none-any.whl", f"wheel file name: {wheel.name}")
    dist_info = f"{PACKAGE}-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        wheel_file = archive.read(f"{dist_info}/WHEEL").decode()
        metadata_text = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    outside = [n for n in names if not n.startswith((f"{PACKAGE}/", f"{dist_info}/"))]
    check(not outside, f"the wheel holds files outside the package and dist-info: {outside}")
    unwanted = [
        n
        for n in names
        if (NEVER | NOT_IN_WHEEL) & set(PurePosixPath(n).parts) or n.endswith(".pyc")
    ]
    check(not unwanted, f"the wheel holds bytecode, tests, scripts or tool folders: {unwanted}")
    missing = WHEEL_REQUIRED - set(names)
    check(not missing, f"the wheel lacks {sorted(missing)}")

    headers = Parser().parsestr(wheel_file)
    check(headers["Root-Is-Purelib"] == "true", "the wheel is not purelib")
    check(headers.get_all("Tag") == ["py3-none-any"], f"wheel tags: {headers.get_all('Tag')}")
    check("inferencesh = inferencesh.cli:main" in entry_points, "no `inferencesh` command")

    package_files = {n for n in names if n.startswith(f"{PACKAGE}/")}
    try:
        metadata = Metadata.from_email(metadata_text, validate=True)
    except ExceptionGroup as group:  # every validation failure, not only the first
        check(False, f"invalid METADATA: {group.exceptions}")
        return package_files
    check(metadata.name == PACKAGE, f"METADATA name: {metadata.name}")
    check(str(metadata.version) == version, f"METADATA version {metadata.version} != {version}")
    check(metadata.description_content_type == "text/markdown", "the README is not Markdown")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    check((metadata.description or "").strip() == readme.strip(), "the description is not README")
    return package_files


def check_sdist(sdist: Path, version: str, package_files: set[str]) -> None:
    check(sdist.name == f"{PACKAGE}-{version}.tar.gz", f"sdist file name: {sdist.name}")
    top = f"{PACKAGE}-{version}/"
    with tarfile.open(sdist) as archive:
        members = archive.getmembers()
        pkg_info = archive.extractfile(f"{top}PKG-INFO")
        assert pkg_info is not None
        pkg_info_text = pkg_info.read().decode()
    names = {m.name for m in members if m.isfile()}
    outside = [n for n in names if not n.startswith(top)]
    check(not outside, f"the sdist holds files outside {top}: {outside}")
    inside = {n.removeprefix(top) for n in names}
    missing = SDIST_REQUIRED - inside
    check(not missing, f"the sdist lacks {sorted(missing)}")
    unwanted = [n for n in inside if NEVER & set(PurePosixPath(n).parts) or n.endswith(".pyc")]
    check(not unwanted, f"the sdist holds bytecode or tool folders: {unwanted}")
    sdist_package = {n for n in inside if n.startswith(f"{PACKAGE}/")}
    differ = sorted(sdist_package ^ package_files)
    check(not differ, f"the sdist's and the wheel's package files differ: {differ}")
    check(Parser().parsestr(pkg_info_text)["Version"] == version, "PKG-INFO has another version")


def check_docs_index() -> None:
    """docs/index.md names every section of the README (its `## ` headings), in any order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = " ".join((ROOT / "docs" / "index.md").read_text(encoding="utf-8").split())
    in_code = False
    for line in readme.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("## "):
            section = line.removeprefix("## ").strip()
            check(f"*{section}*" in index, f"docs/index.md does not list the README's {section!r}")


def run(what: str, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str] | None:
    """`subprocess.run(args)`, its output captured, within `RUN_TIMEOUT` seconds; None (and a
    problem recorded) when it takes longer."""
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False, **kwargs
        )
    except subprocess.TimeoutExpired:
        check(False, f"{what} did not finish within {RUN_TIMEOUT} seconds: {' '.join(args)}")
        return None


def check_install(wheel: Path, version: str) -> None:
    """Install the wheel alone into a temporary folder and import it from there."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "site"
        installed = run(
            "installing the wheel",
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--no-index", "--no-compile", "--target", str(target), str(wheel)],
        )  # fmt: skip
        if installed is None:
            return
        if installed.returncode != 0:
            check(False, f"the wheel does not install: {installed.stdout}{installed.stderr}")
            return
        env = {**os.environ, "PYTHONPATH": str(target)}
        code = (
            f"import importlib, sys; modules = {PUBLIC_MODULES!r}\n"
            "for name in modules: importlib.import_module(name)\n"
            "import inferencesh; print(inferencesh.__file__); print(inferencesh.__version__)"
        )
        imported = run(
            "importing the installed wheel", [sys.executable, "-c", code], cwd=folder, env=env
        )
        if imported is not None and imported.returncode != 0:
            check(False, f"the installed wheel does not import:{imported.stderr}")
        elif imported is not None:
            where, installed_version = imported.stdout.split()
            check(Path(where).is_relative_to(target), f"imported {where}, not the wheel's copy")
            check(installed_version == version, f"installed __version__ {installed_version}")
        command = run(
            "`inferencesh --version` from the wheel",
            [str(target / "bin" / "inferencesh"), "--version"], cwd=folder, env=env,
        )  # fmt: skip
        if command is not None:
            check(
                command.returncode == 0 and version in command.stdout,
                f"`inferencesh --version` from the wheel: {command.stdout}{command.stderr}",
            )


def main(dist: Path) -> int:
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}: {wheels + sdists}", file=sys.stderr)
        return 1
    version = project_version()
    check(
        inferencesh.__version__ == version,
        f"installed inferencesh.__version__ {inferencesh.__version__} != pyproject's {version}"
        " (reinstall: pip install -e '.[dev]')",
    )
    check(Version(version) > OFFICIAL, f"version {version} does not sort above {OFFICIAL}")
    check(Version(version).major >= 1, f"version {version} is in the official client's 0.x line")
    package_files = check_wheel(wheels[0], version)
    check_sdist(sdists[0], version, package_files)
    check_install(wheels[0], version)
    check_docs_index()
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_dist: {wheels[0].name} and {sdists[0].name} are fine")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIST_DIR")
    sys.exit(main(Path(sys.argv[1])))
