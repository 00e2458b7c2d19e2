"""The house plan's import rules hold (import-linter over pyproject.toml's contracts)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_contract_of_the_house_plan_is_kept() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    names = [c["name"] for c in contracts["contracts"]]
    assert len(names) >= 4
    done = lint_imports(ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in names:
        assert f"{name} KEPT" in done.stdout, done.stdout


def test_a_broken_rule_is_reported(tmp_path: Path) -> None:
    """The check bites: formats reads its errors from streamproc.errors, so a contract
    forbidding that is reported broken, naming the import."""
    config = tmp_path / "pyproject.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "streamproc"\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "formats without errors"\ntype = "forbidden"\n'
        'source_modules = ["streamproc.formats"]\nforbidden_modules = ["streamproc.errors"]\n'
    )
    done = lint_imports(config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "formats without errors BROKEN" in done.stdout
    assert "streamproc.formats.ticketmatic -> streamproc.errors" in done.stdout


def test_the_wheel_holds_the_product_and_no_dev_tooling(tmp_path: Path) -> None:
    """What `pip install` gets: the roles, formats, simulators and schemas; the benchmarks,
    the local broker and the `make run` driver stay in the repository (tests/)."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = tmp_path.glob("streamproc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for shipped in (
        "streamproc/cli.py",
        "streamproc/formats/mparticle.py",
        "streamproc/mapper/processor.py",
        "streamproc/sim/credentials.py",
        "streamproc/_schemas/mparticle/batch.schema.json",
    ):
        assert shipped in names, sorted(names)
    dev = [n for n in names if any(t in n for t in ("bench/", "devrun", "localkafka", "tests/"))]
    assert dev == []
