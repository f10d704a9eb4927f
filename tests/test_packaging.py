"""The library as an installable package: what the wheel holds, what `import quixer` costs and
exports, the editable install setup.sh makes, and pyproject's dependencies against the pins."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.commands import top_level_scripts
from tests.helpers import REPO


def python(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in ``cwd`` (never the checkout), without PYTHONPATH."""
    import os

    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=300)


def test_import_is_cheap_and_every_export_resolves(tmp_path):
    code = """
import json, sys
import quixer
heavy = sorted(m for m in ("torch", "numpy", "lambeq", "sklearn", "qiskit") if m in sys.modules)
origin = {name: getattr(quixer, name).__module__ for name in quixer.__all__}
from quixer import Quixer
print(json.dumps({"heavy": heavy, "origin": origin, "file": quixer.__file__,
                  "official": callable(Quixer.from_official_state_dict)}))
"""
    proc = python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["heavy"] == []  # import quixer alone loads no heavy dependency
    assert Path(out["file"]) == REPO / "quixer" / "__init__.py"  # the editable install: this checkout
    assert out["official"]
    import quixer

    assert {"Quixer", "WindowConfig", "prepare_autoregressive_data", "encode_windows", "quantize_embeddings",
            "train_quixer", "train_classical", "tune_quixer", "prepare_classical_benchmarks",
            "download_sequences", "write_report"} <= set(quixer.__all__)
    for name, module in out["origin"].items():
        assert module == f"quixer.{quixer._EXPORTS[name]}", name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        quixer.nope  # noqa: B018


@pytest.mark.parametrize("package", ["quixer", "quixer.sim", "quixer.hardware"])
def test_every_module_is_listed_in_the_package_docstring(package):
    """Each package's docstring is its map: one line per module and subpackage."""
    import importlib

    folder = REPO.joinpath(*package.split("."))
    listed = set(re.findall(r"^- ``(\w+)``", importlib.import_module(package).__doc__, re.M))
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in folder.glob("*/__init__.py")}
    assert listed == modules


def test_scripts_and_tests_are_not_installed(tmp_path):
    """From another directory only the package is importable: the stage scripts, tests/ and
    bench/ stay in the checkout (a dependency's own top-level ``tests`` in site-packages is fine)."""
    names = [s[:-3] for s in top_level_scripts() if s.endswith(".py")] + ["tests", "bench"]
    code = ("import importlib.util, json\n"
            f"specs = {{n: importlib.util.find_spec(n) for n in {names!r}}}\n"
            "print(json.dumps({n: [s.origin, *(s.submodule_search_locations or [])] if s else [] "
            "for n, s in specs.items()}))")
    proc = python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert set(found) == set(names)
    for name, places in found.items():
        for place in filter(None, places):
            assert not Path(place).is_relative_to(REPO) or Path(place).is_relative_to(REPO / ".venv"), (name, place)


@pytest.mark.slow
def test_wheel_holds_the_package_and_kernel_source_and_runs_from_anywhere(tmp_path):
    """Build a wheel from a copy of the project (the checkout stays clean), install it into a
    plain directory and use it there: the kernel source must come along as package data."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "quixer", src / "quixer", ignore=shutil.ignore_patterns("__pycache__"))
    for name in top_level_scripts():  # present beside the package, as in the checkout, but not packaged
        shutil.copy(REPO / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    package = {n for n in names if not n.startswith("quixer_rna-")}
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "quixer").rglob("*.py")} | {"quixer/sim/statevector_kernel.cpp"}
    assert package == expected
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import quixer, quixer.sim.native as n; print(quixer.__file__); print(n.SOURCE.is_file()); "
            "from quixer import Quixer; print(Quixer.__module__)")
    proc = python(code, tmp_path, env={"PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    file, has_source, module = proc.stdout.split()
    assert Path(file).is_relative_to(target) and has_source == "True" and module == "quixer.model"


def _requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line.split("#", 1)[0].strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_pyproject_dependencies_are_the_pins_as_lower_bounds():
    """requirements.txt is the tested environment; pyproject.toml says the same to pip, as
    lower bounds (qiskit-aer is an extra: CUDA machines have qiskit-aer-gpu instead)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {}
    for spec in project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([A-Za-z0-9_.+\-]+)", spec).groups()
        declared[name.lower()] = version
    assert declared == _requirement_pins()
    assert project["optional-dependencies"]["aer"] == [f"qiskit-aer>={_requirement_pins()['qiskit-aer']}"]
    assert project["requires-python"] == ">=3.11"


@pytest.mark.slow
def test_benchmark_imports_the_installed_package_from_anywhere(tmp_path):
    """bench/bench_quixer.py (model against the naive simulator) run from another directory."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_quixer.py"), "--steps", "1", "--warmup", "0",
                           "--impl", "both", "--threads", "1", "--batch-size", "2", "--qubits", "2", "--window", "4",
                           "--embed-dim", "8", "--vocab", "5"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["impl"] == "fast" and result["naive"]["impl"] == "naive"


def test_tests_and_benchmarks_import_the_package_without_path_edits():
    """The installed package is what tests and benchmarks import: no ``sys.path`` edits in them, and no
    subprocess of theirs gets the checkout put on its path (``PYTHONPATH=...REPO``)."""
    files = sorted((REPO / "tests").glob("*.py")) + sorted((REPO / "bench").glob("*.py"))
    edits = [f"{f.relative_to(REPO)}:{i}" for f in files
             for i, line in enumerate(f.read_text().splitlines(), 1)
             if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=|PYTHONPATH=str\(REPO", line)]
    assert files and edits == []
