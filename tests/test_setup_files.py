"""requirements.txt and environment.yml pin the same packages (conda users get what pip users get)."""
from __future__ import annotations

import re

from tests.helpers import REPO


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("- ").strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([A-Za-z0-9_.+\-]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_requirements_and_environment_pin_the_same_versions():
    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    env_text = (REPO / "environment.yml").read_text()
    pip_section = env_text.split("- pip:", 1)[1].splitlines()
    env = _pins(pip_section)
    assert req and req == env
    assert "name: quixer" in env_text and re.search(r"^\s*-\s*python=3\.11\s*$", env_text, re.M)
    for needed in ("torch", "lambeq", "discopy", "pytket", "pytket-qiskit", "qiskit", "qiskit-aer",
                   "scikit-learn", "biopython", "numpy", "tqdm", "optuna", "matplotlib", "pytest"):
        assert needed in req, needed
    assert req["torch"] == "2.13.0" and req["lambeq"] == "0.5.0"
    assert "qiskit-aer-gpu" in env_text  # the documented swap for CUDA machines


def test_installed_versions_match_the_pins():
    from importlib.metadata import PackageNotFoundError, version

    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    for name, pinned in req.items():
        try:
            got = version(name)
        except PackageNotFoundError:
            if name == "qiskit-aer":  # a CUDA machine has qiskit-aer-gpu instead
                got = version("qiskit-aer-gpu")
            else:
                raise
        assert got.split("+")[0] == pinned, f"{name}: installed {got}, pinned {pinned}"
