"""The package layout: the import graph read from the source, and runs written before the
package was split into ``quixer/sim/`` and ``quixer/hardware/`` (tests/fixtures/run_before_package_move)."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, run_script

PACKAGE = REPO / "quixer"
OLD = REPO / "tests" / "fixtures" / "run_before_package_move"
# what the two subpackages may import from the rest of the package (besides themselves)
SIM_MAY_IMPORT = {"quixer", "quixer.common"}
HARDWARE_MAY_IMPORT = {"quixer", "quixer.common", "quixer.data", "quixer.model", "quixer.streams", "quixer.scoring",
                       "quixer.intervals"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every package module ``path`` imports, at module level or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from . import native` imports a module
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known) for p in paths}


def test_import_graph_has_no_cycle(graph):
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("package, allowed", [("quixer.sim", SIM_MAY_IMPORT), ("quixer.hardware", HARDWARE_MAY_IMPORT)])
def test_subpackages_never_import_upwards(graph, package, allowed):
    """Simulation and the hardware estimate sit below the model and the stages: nothing in them
    reaches the training loop, a stage module or the report."""
    for module, targets in graph.items():
        if module == package or module.startswith(package + "."):
            upward = {t for t in targets if not t.startswith(package) and t not in allowed}
            assert not upward, f"{module} imports {sorted(upward)}"


def test_the_simulation_is_entered_from_the_model_and_the_training_step_only(graph):
    entering = {m for m, targets in graph.items() if not m.startswith("quixer.sim")
                and any(t.startswith("quixer.sim") for t in targets)}
    assert entering == {"quixer.model", "quixer.training"}


def old_run(tmp_path: Path) -> Path:
    """A copy of the pre-move run (its recorded paths point into a /tmp that no longer exists)."""
    run = tmp_path / "run"
    shutil.copytree(OLD / "run", run)
    return run


def test_a_checkpoint_written_before_the_move_loads_into_the_model():
    from quixer.model import Quixer

    config = json.loads((OLD / "run" / "config.json").read_text())
    best = torch.load(OLD / "run" / "best.pt", map_location="cpu", weights_only=True)
    model = Quixer(n_qubits=config["qubits"], n_tokens=7, qsvt_polynomial_degree=config["degree"],
                   n_ansatz_layers=config["ansatz_layers"], vocabulary_size=256,
                   embedding_dimension=config["embedding_dim"], dropout=config["dropout"])
    model.load_state_dict(best["model"], strict=True)
    official = Quixer.from_official_state_dict(model.to_official_state_dict(), n_qubits=2, n_tokens=7,
                                               qsvt_polynomial_degree=1, n_ansatz_layers=1, vocabulary_size=256,
                                               embedding_dimension=8, dropout=0.1)
    x = torch.randint(0, 256, (4, 7))
    model.eval(), official.eval()
    with torch.no_grad():
        assert torch.allclose(model(x)[0], official(x)[0], atol=1e-5)


def test_a_run_written_before_the_move_loads_for_the_hardware_estimate(tmp_path):
    from quixer.hardware import load_quixer_run

    run = load_quixer_run(old_run(tmp_path), data_dir=OLD / "tokens")
    assert run.model.n_qubits == 2 and run.config["degree"] == 1


@pytest.mark.slow
def test_a_run_written_before_the_move_extends_and_reports(tmp_path):
    run = old_run(tmp_path)
    proc = run_script("train_quixer_hybrid.py", "--config", run / "config.json", "--output_dir", run,
                      "--data_dir", OLD / "tokens", "--resume", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    results = json.loads((run / "results.json").read_text())
    assert results["extended_from"] == [1] and results["epochs_run"] == 2
    # begun with one optimizer group (the loop Adam), it goes on with that layout, not today's two
    groups = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["optimizer"]["param_groups"]
    assert len(groups) == 1 and groups[0]["fused"] is None
    proc = run_script("report_results.py", tmp_path, "--output_dir", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "report" / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["quixer"]
