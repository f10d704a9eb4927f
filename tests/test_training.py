"""The one training loop, through train_quixer_hybrid.py, on small real token data.

Real Quixer training steps (tiny: 2 qubits, degree 2, 2 ansatz layers, E=16) on windows of
real transcripts; metrics checked against an independent evaluation, resume against an
unbroken run, layerwise freezing against the initial weights, DDP with two CPU processes.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.token_fixtures import make_token_dir

import train_quixer_hybrid
from quixer.common import UserError, seed_everything
from quixer.data import load_token_data
from quixer.flags import parse_args, quixer_configs, quixer_parser, train_quixer
from quixer.model import Quixer, QuixerConfig
from quixer.training import TrainConfig, active_layers_at, build_quixer, run_config

REPO = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"model", "seed", "parameters", "parameter_breakdown", "test_loss", "test_perplexity", "test_top1",
               "test_top5", "novel_test_loss", "novel_test_perplexity", "novel_test_top1", "novel_test_top5",
               "novel_fraction", "test_targets", "targets_sha256", "train_seconds", "train_sequences_per_second",
               "eval_sequences_per_second", "postselection", "val_loss", "epochs_run", "stop_reason", "converged"}
METRIC_KEYS = {"epoch", "train_loss", "val_loss", "val_perplexity", "val_top1", "val_top5",
               "epoch_seconds", "lr", "postselection"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return make_token_dir(tmp_path_factory.mktemp("tokens"), with_centers=True)


def tiny(data: Path, out: Path, *extra) -> list[str]:
    return ["--data_dir", str(data), "--output_dir", str(out), "--qubits", "2", "--degree", "2",
            "--ansatz_layers", "2", "--embedding_dim", "16", "--device", "cpu", "--batch_size", "32",
            "--lr", "0.01", "--seed", "7", *map(str, extra)]


class Interrupt(Exception):
    pass


def run_interrupted(argv: list[str], after_epoch: int) -> None:
    """Run the trainer and 'kill' it right after epoch ``after_epoch`` was checkpointed."""
    def callback(epoch: int, record: dict) -> None:
        if epoch == after_epoch:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_quixer(parse_args(quixer_parser(), argv), epoch_callback=callback)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def stream_targets(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (context, target) of a split, rebuilt in plain Python from the windows' sources: each
    transcript's tokens by base offset, then every position with W - 1 tokens before it in an
    unbroken run (no code shared with quixer.streams)."""
    obj = torch.load(data_dir / f"{split}.pt", weights_only=True)
    seq, src = obj["sequences"].tolist(), obj["sources"]
    width = len(seq[0])
    by_transcript: dict[int, dict[int, int]] = {}
    for row, t, off in zip(seq, src["transcript"].tolist(), src["offsets"].tolist()):
        by_transcript.setdefault(t, {}).update({off + j: tok for j, tok in enumerate(row)})
    contexts, targets = [], []
    for tokens in by_transcript.values():
        for p in sorted(tokens):
            if all(p - d in tokens for d in range(1, width)):
                contexts.append([tokens[p - d] for d in range(width - 1, 0, -1)])
                targets.append(tokens[p])
    return torch.tensor(contexts), torch.tensor(targets)


def independent_eval(run: Path, data_dir: Path, split: str) -> dict:
    """Plain-torch metrics of best.pt on every target of one split (no code shared with
    quixer.training.evaluate)."""
    train, cfg = quixer_configs(parse_args(quixer_parser(), ["--config", str(run / "config.json")]))
    model = build_quixer(load_token_data(data_dir), cfg, train)
    model.load_state_dict(torch.load(run / "best.pt", weights_only=True)["model"])
    model.eval()
    x, y = stream_targets(data_dir, split)
    with torch.no_grad():
        logits, post = model(x)
    ranks = (logits > logits.gather(1, y[:, None])).sum(1)
    return {"loss": float(F.cross_entropy(logits, y)), "top1": float((logits.argmax(1) == y).float().mean()),
            "top5": float((ranks < 5).float().mean()), "postselection": float(post.mean()), "targets": len(y)}


def test_quixer_run_writes_consistent_files(tokens, tmp_path):
    out = tmp_path / "run"
    assert train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 3)) == 0
    results = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(results)
    assert results["model"] == "quixer" and results["epochs_run"] == 3
    # real numbers: embedding 4096 + angles 272 + LCU 7 complex (14) + polynomial 3 + feed-forward 8 + head 4464
    assert results["parameters"] == 8857
    assert results["parameter_breakdown"] == {"embedding": 4096, "angle_map": 272, "quantum": 25, "head": 4464}
    assert math.isclose(results["test_perplexity"], math.exp(results["test_loss"]), rel_tol=1e-9)
    assert 0 < results["postselection"] <= 1 + 1e-6
    assert results["train_sequences_per_second"] > 0 and results["train_seconds"] > 0
    assert results["stop_reason"] in ("max_epochs", "early_stop") and 0 < results["novel_fraction"] <= 1
    made = results["provenance"]  # how the run was made
    assert len(made["git_commit"]) == 40 and isinstance(made["git_dirty"], bool)
    assert made["packages"]["torch"] == torch.__version__ and made["packages"]["numpy"]
    assert made["device"] == "cpu" and made["simulator"] in ("native", "torch") and made["host"]
    assert made["started"] <= made["finished"] and "--epochs" in made["command"]
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all(METRIC_KEYS <= set(m) for m in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 0.1, "Quixer did not learn on real data"
    best = math.inf  # plateau schedule: halve after an epoch that lowers the best by less than 0.01 %
    for before, after in zip(metrics, metrics[1:]):
        improved = before["val_loss"] < best * (1 - 1e-4)
        best = before["val_loss"] if improved else best
        assert after["lr"] == pytest.approx(before["lr"] * (1 if improved else 0.5))
    best_epoch = min(metrics, key=lambda m: m["val_loss"])["epoch"]
    assert results["best_epoch"] == best_epoch
    assert math.isclose(results["val_loss"], metrics[best_epoch - 1]["val_loss"], rel_tol=1e-6)
    ref = independent_eval(out, tokens, "test")
    assert results["test_targets"] == ref["targets"] > 160  # every position, not only each window's last
    for key in ("loss", "top1", "top5", "postselection"):
        assert math.isclose(results[f"test_{key}" if key != "postselection" else key], ref[key],
                            rel_tol=1e-5, abs_tol=1e-6), key
    # the val scores are the best epoch's validation, kept beside best.pt rather than scored again
    val_ref = independent_eval(out, tokens, "val")
    for key in ("loss", "top1", "top5"):
        assert math.isclose(results[f"val_{key}"], val_ref[key], rel_tol=1e-5, abs_tol=1e-6), key
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads(json.dumps(run_config(*quixer_configs(parse_args(quixer_parser(), tiny(tokens, out, "--epochs", 3))))))


def test_resume_reproduces_unbroken_run(tokens, tmp_path):
    argv = lambda out, *extra: tiny(tokens, out, "--epochs", 2, "--dropout", 0.2, *extra)  # noqa: E731
    unbroken = tmp_path / "unbroken"
    train_quixer_hybrid.main(argv(unbroken))
    broken = tmp_path / "broken"
    run_interrupted(argv(broken), after_epoch=1)
    assert not (broken / "results.json").exists() and len(read_metrics(broken)) == 1
    # as if killed after writing epoch 2's metrics line but before its checkpoint
    with open(broken / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 2, "train_loss": -1.0}) + "\n")
    train_quixer_hybrid.main(argv(broken, "--resume"))

    a = torch.load(unbroken / "last.pt", weights_only=True)
    b = torch.load(broken / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (unbroken, broken))
    for key in ("test_loss", "test_top1", "test_top5", "postselection", "val_loss", "best_epoch", "epochs_run"):
        assert ra[key] == rb[key], key
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("epoch_seconds", "sequences_per_second")} for m in ms]  # noqa: E731
    assert strip(read_metrics(unbroken)) == strip(read_metrics(broken))


def test_cuda_graph_on_a_cpu_changes_nothing_and_may_change_on_resume(tokens, tmp_path, capsys):
    """--cuda_graph is a no-op on a CPU (one log line): with dropout, a cosine schedule and a partial
    last batch (70 windows: 32 + 32 + 6), a run that starts with it and resumes without it is the
    unbroken run without it, bit for bit (the flag does not define a run, like --device)."""
    argv = lambda out, *extra: tiny(tokens, out, "--epochs", 2, "--dropout", 0.2, "--epoch_size", 70,  # noqa: E731
                                    "--lr_schedule", "cosine", *extra)
    unbroken = tmp_path / "unbroken"
    train_quixer_hybrid.main(argv(unbroken))
    broken = tmp_path / "broken"
    capsys.readouterr()
    run_interrupted(argv(broken, "--cuda_graph"), after_epoch=1)  # logs to stderr (the trainer's set-up above)
    assert "--cuda_graph: training on cpu, where nothing is captured" in capsys.readouterr().err
    train_quixer_hybrid.main(argv(broken, "--resume"))
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (unbroken, broken))
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("epoch_seconds", "sequences_per_second")} for m in ms]  # noqa: E731
    assert strip(read_metrics(unbroken)) == strip(read_metrics(broken))


def test_cuda_graph_refuses_layerwise_training(tokens, tmp_path):
    with pytest.raises(UserError, match="--cuda_graph cannot be combined with --use_layerwise_training") as error:
        train_quixer_hybrid.main(tiny(tokens, tmp_path / "run", "--use_layerwise_training", "--cuda_graph"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_config_json_is_pinned(tokens, tmp_path):
    """config.json of a Quixer run: the same keys, values and bytes as every run directory so far
    (written by the flags in sorted order; resume and --config read it back)."""
    out = tmp_path / "run"
    train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 1, "--max_train_batches", 2))
    expected = {
        "ansatz_layers": 2, "batch_size": 32, "cuda_graph": False, "data_dir": str(tokens), "degree": 2,
        "device": "cpu", "dropout": 0.1, "embedding_dim": 16, "epoch_size": None, "epochs": 1,
        "eval_batch_size": 256, "eval_targets": 100000, "init_strategy": "small_gaussian", "lr": 0.01,
        "lr_schedule": "plateau", "max_grad_norm": 5.0, "max_train_batches": 2, "output_dir": str(out),
        "patience": 3, "protocol": "project", "qubits": 2, "seed": 7, "selection_targets": 0,
        "task": "autoregressive", "tensorboard": None, "use_layerwise_training": False, "weight_decay": 0.0001,
    }
    assert (out / "config.json").read_text() == json.dumps(expected, indent=2) + "\n"


def test_checkpoints_carry_the_model_config(tokens, tmp_path):
    """best.pt and last.pt hold the QuixerConfig the run was built from, under the flags' names: it
    alone (with the data's window and vocabulary) rebuilds a model that loads the weights strictly."""
    out = tmp_path / "run"
    train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 1, "--max_train_batches", 2, "--dropout", 0.2))
    best, last = (torch.load(out / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert set(best) == {"model", "epoch", "val", "active_layers", "config", "model_config"}
    assert set(last) == {"model", "optimizer", "lr_scheduler", "state", "rng", "data", "config", "model_name",
                         "model_config"}
    cfg = QuixerConfig(**best["model_config"])
    assert cfg == QuixerConfig(**last["model_config"]) == QuixerConfig(qubits=2, degree=2, ansatz_layers=2,
                                                                      embedding_dim=16, dropout=0.2)
    assert {k: best["config"][k] for k in best["model_config"]} == best["model_config"]  # no renaming
    data = load_token_data(tokens)
    model = Quixer.from_config(cfg, n_tokens=data.n_input_tokens, vocabulary_size=data.vocab_size)
    model.load_state_dict(best["model"], strict=True)
    assert model.dropout.p == 0.2 and (model.n_qubits, model.degree, model.n_ansatz_layers) == (2, 2, 2)


def test_a_checkpoint_without_model_config_still_resumes(tokens, tmp_path):
    """Runs written before checkpoints carried the model's configuration resume as before."""
    out = tmp_path / "run"
    argv = tiny(tokens, out, "--epochs", 2, "--max_train_batches", 2)
    run_interrupted(argv, after_epoch=1)
    for name in ("best.pt", "last.pt"):  # as the earlier trainer wrote them
        ckpt = torch.load(out / name, weights_only=True)
        del ckpt["model_config"]
        torch.save(ckpt, out / name)
    train_quixer_hybrid.main(argv + ["--resume"])
    assert json.loads((out / "results.json").read_text())["epochs_run"] == 2 and len(read_metrics(out)) == 2
    assert QuixerConfig(**torch.load(out / "last.pt", weights_only=True)["model_config"]).qubits == 2


def test_configs_are_the_flags_under_their_own_names():
    """Every field of the configurations is a flag of the same name (none renamed on the way); the
    configurations validate themselves with the flags' one-line messages; the loop reads no flags."""
    import ast

    from quixer.baselines import ClassicalConfig
    from quixer.flags import classical_parser
    from quixer.training import TrainConfig

    def dests(parser):
        return {a.dest for a in parser._actions}

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"command"}
    assert train_fields | {f.name for f in dataclasses.fields(QuixerConfig)} <= dests(quixer_parser())
    assert train_fields | {f.name for f in dataclasses.fields(ClassicalConfig)} <= dests(classical_parser())
    with pytest.raises(UserError, match=r"^--lr must be > 0, got 0$"):
        TrainConfig(lr=0)
    with pytest.raises(UserError, match=r"^--qubits must be >= 1, got 0$"):
        QuixerConfig(qubits=0)
    with pytest.raises(UserError, match=r"^--dropout must be in \[0, 1\), got 1.5$"):
        QuixerConfig(dropout=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 0.1  # type: ignore[misc]
    for module in ("training", "model", "baselines"):
        tree = ast.parse((REPO / "quixer" / f"{module}.py").read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "argparse" not in imported and "flags" not in imported, module


def test_output_dir_guard(tokens, tmp_path):
    out = tmp_path / "run"
    train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 1, "--max_train_batches", 2))
    with pytest.raises(UserError, match="different run.*lr"):
        train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 1, "--max_train_batches", 2, "--lr", 0.02))
    with pytest.raises(UserError, match="different run"):
        train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 1, "--max_train_batches", 2, "--lr", 0.02, "--resume"))
    before = (out / "results.json").read_text()
    for extra in ((), ("--resume",)):  # the same finished run again: nothing to do, with or without --resume
        train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 1, "--max_train_batches", 2, *extra))
        assert (out / "results.json").read_text() == before
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds 1 file.*notes.txt.*not a training run"):
        train_quixer_hybrid.main(tiny(tokens, other, "--epochs", 1))
    assert (other / "notes.txt").read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_layer_schedule():
    assert [active_layers_at(e, 50, 4) for e in (0, 11, 12, 24, 25, 36, 37, 49)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [active_layers_at(e, 2, 4) for e in (0, 1)] == [2, 4]  # fewer epochs than layers
    assert [active_layers_at(e, 3, 1) for e in range(3)] == [1, 1, 1]


def test_layerwise_training_leaves_inactive_layers_untouched(tokens, tmp_path):
    out = tmp_path / "layerwise"
    argv = tiny(tokens, out, "--epochs", 2, "--use_layerwise_training", "--max_train_batches", 6,
                "--init_strategy", "xavier")
    run_interrupted(argv, after_epoch=1)  # epoch 1 trains layer 1 only
    args = parse_args(quixer_parser(), argv)
    seed_everything(args.seed)
    train, cfg = quixer_configs(args)
    init = build_quixer(load_token_data(tokens), cfg, train).state_dict()
    after1 = torch.load(out / "last.pt", weights_only=True)["model"]
    per_layer = 4 * args.qubits
    for name in ("embedding_to_angles.weight", "embedding_to_angles.bias"):
        assert torch.equal(after1[name][per_layer:], init[name][per_layer:]), f"{name}: inactive layer changed"
        assert not torch.equal(after1[name][:per_layer], init[name][:per_layer]), f"{name}: active layer frozen"
    assert not torch.equal(after1["embedding.weight"], init["embedding.weight"])

    train_quixer_hybrid.main(argv + ["--resume"])
    assert [m["active_layers"] for m in read_metrics(out)] == [1, 2]
    final = torch.load(out / "last.pt", weights_only=True)["model"]
    assert not torch.equal(final["embedding_to_angles.weight"][per_layer:], init["embedding_to_angles.weight"][per_layer:])


def test_config_file_and_explicit_flags(tokens, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"lr": 0.5, "qubits": 3, "init_strategy": "uniform", "use_layerwise_training": True}))
    args = parse_args(quixer_parser(), ["--config", str(cfg), "--lr", "0.01"])
    assert (args.lr, args.qubits, args.init_strategy, args.use_layerwise_training) == (0.01, 3, "uniform", True)
    cfg.write_text(json.dumps({"learning_rate": 0.5}))
    with pytest.raises(UserError, match="unknown flag.*learning_rate"):
        parse_args(quixer_parser(), ["--config", str(cfg)])
    cfg.write_text(json.dumps({"init_strategy": "zeros"}))
    with pytest.raises(UserError, match="init_strategy must be one of"):
        parse_args(quixer_parser(), ["--config", str(cfg)])
    cfg.write_text(json.dumps({"qubits": 2.5}))
    with pytest.raises(UserError, match="qubits must be int"):
        parse_args(quixer_parser(), ["--config", str(cfg)])


def test_bad_inputs_are_one_line_errors(tokens, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "train_quixer_hybrid.py"), "--task", "classification",
                           "--data_dir", str(tokens), "--output_dir", str(tmp_path / "x")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --task 'classification' is not supported: the only task is 'autoregressive'"]
    assert not (tmp_path / "x").exists()

    with pytest.raises(UserError, match="token directory not found"):
        train_quixer_hybrid.main(tiny(tmp_path / "missing", tmp_path / "y"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "val", "test"):
        seq = torch.randint(0, 10, (6, 5))
        labels = seq[:, -1].clone()
        if split == "val":
            labels[3] += 1
        torch.save({"sequences": seq, "labels": labels}, bad / f"{split}.pt")
    with pytest.raises(UserError, match=r"val.pt: labels differ from sequences\[:, -1\] in 1 rows"):
        load_token_data(bad)
    torch.save({"sequences": torch.arange(5)}, bad / "val.pt")
    with pytest.raises(UserError, match="2-D tensor"):
        load_token_data(bad)
    (bad / "val.pt").unlink()
    with pytest.raises(UserError, match="val.pt: split file not found"):
        load_token_data(bad)
    torch.save({"sequences": torch.randint(0, 10, (6, 5))}, bad / "val.pt")
    torch.save({"cluster_centers": torch.zeros(8, 3)}, bad / "cluster_centers.pt")
    with pytest.raises(UserError, match="out of range for a vocabulary of 8"):
        load_token_data(bad)
    (bad / "cluster_centers.pt").unlink()
    assert load_token_data(bad).vocab_source == "max token id + 1"
    with pytest.raises(UserError, match="--lr must be > 0"):
        train_quixer_hybrid.main(tiny(tokens, tmp_path / "z", "--lr", 0))


@pytest.mark.slow
def test_ddp_two_cpu_processes(tokens, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(REPO / "train_quixer_hybrid.py"), *tiny(tokens, out, "--epochs", 1, "--max_train_batches", 4)],
        capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["epochs_run"] == 1
    assert len(read_metrics(out)) == 1
    assert proc.stderr.count("INFO test: loss") == 1  # only rank 0 reports and writes
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl",
                                                     "results.json", "test_scores.npz", "val_scores.npz"]
    assert len(torch.load(out / "last.pt", weights_only=True)["rng"]) == 2
    # metrics gathered from the two shards (uneven batches) equal a one-process evaluation
    ref = independent_eval(out, tokens, "test")
    assert math.isclose(results["test_loss"], ref["loss"], rel_tol=1e-5)
    assert math.isclose(results["test_top5"], ref["top5"], abs_tol=1e-6)


def test_early_stopping_follows_patience(tokens, tmp_path):
    out = tmp_path / "early"
    train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 6, "--patience", 1, "--lr", 0.2, "--max_train_batches", 8))
    results = json.loads((out / "results.json").read_text())
    metrics = read_metrics(out)
    best, expected_stop = float("inf"), len(metrics)
    for m in metrics:  # the first epoch without a new best ends the run when patience is 1
        if m["val_loss"] < best:
            best = m["val_loss"]
        else:
            expected_stop = m["epoch"]
            break
    assert results["epochs_run"] == len(metrics) == expected_stop
    assert results["stop_reason"] == ("early_stop" if expected_stop < 6 else "max_epochs")
    assert results["converged"] == (expected_stop < 6)


def test_official_protocol_fills_unset_flags_only(tokens, tmp_path):
    official = parse_args(quixer_parser(), ["--protocol", "official"])
    assert (official.epochs, official.lr_schedule, official.patience, official.weight_decay, official.batch_size,
            official.max_grad_norm, official.lr, official.selection_targets) == (30, "cosine", 0, 1e-4, 32, 5.0,
                                                                                0.002, 10_000)
    assert parse_args(quixer_parser(), ["--protocol", "official", "--epochs", "3"]).epochs == 3
    project = parse_args(quixer_parser(), [])
    assert (project.protocol, project.epochs, project.lr_schedule, project.patience) == ("project", 50, "plateau", 3)
    # a run's config.json carries its protocol; its recorded values beat the protocol, the command line both
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"protocol": "official", "epochs": 7}))
    args = parse_args(quixer_parser(), ["--config", str(cfg)])
    assert (args.protocol, args.epochs, args.lr_schedule) == ("official", 7, "cosine")
    args = parse_args(quixer_parser(), ["--config", str(cfg), "--protocol", "project", "--epochs", "2"])
    assert (args.protocol, args.epochs, args.lr_schedule) == ("project", 2, "plateau")
    import train_classical_baselines
    from quixer.flags import resolve_classical_args

    args = parse_args(train_classical_baselines.build_parser(), ["--model", "transformer", "--protocol", "official"])
    resolve_classical_args(args)
    assert (args.epochs, args.lr_schedule, args.lr) == (30, "cosine", 0.001)  # the Transformer's official rate


def test_convergence_rule():
    from quixer.training import is_converged

    assert is_converged("early_stop", [])
    assert is_converged("max_epochs", [2.0, 1.5, 1.4995, 1.4990])  # last two epochs each < 0.1 % lower
    assert is_converged("max_epochs", [2.0, 1.5, 1.4995, 1.51])  # a rise counts as no improvement
    assert not is_converged("max_epochs", [2.0, 1.5, 1.49, 1.4895])  # 0.67 % two epochs before the end
    assert not is_converged("max_epochs", [1.5, 1.4995])  # too short to tell
    assert not is_converged("", [1.5, 1.5, 1.5])


def test_loss_drops_are_what_the_rule_tests():
    from quixer.run_dir import CONVERGENCE_TOLERANCE, loss_drops

    drops = loss_drops([2.0, 1.5, 1.35, 1.377])
    assert drops == pytest.approx([0.1, -0.02])  # relative to the epoch before; a rise is negative
    assert loss_drops([1.5, 1.4]) == []  # two losses give one drop, not the rule's two
    assert loss_drops([1.0, 1.0, 1.0 - CONVERGENCE_TOLERANCE], epochs=1) == pytest.approx([CONVERGENCE_TOLERANCE])


def test_selection_sample_is_fixed_subset(tokens):
    from quixer.streams import eval_targets

    data = load_token_data(tokens)
    full = eval_targets(data.streams("val"), data.window_size, 0)
    sample = full.sample(40)
    assert len(sample) == 40 and sample.key != full.key
    assert set(sample.starts) <= set(full.starts) and list(sample.starts) == sorted(sample.starts)
    assert sample.starts.tolist() == full.sample(40).starts.tolist()  # depends on the targets only
    index = {s: i for i, s in enumerate(full.starts)}
    rows = [index[s] for s in sample.starts]
    assert sample.groups.tolist() == full.groups[rows].tolist() and sample.novel.tolist() == full.novel[rows].tolist()
    assert full.sample(0) is full and full.sample(len(full)) is full


def test_selection_on_sample_and_full_validation_once(tokens, tmp_path):
    out = tmp_path / "run"
    argv = tiny(tokens, out, "--protocol", "official", "--epochs", 2, "--selection_targets", 30,
                "--max_train_batches", 4)
    train_quixer_hybrid.main(argv)
    results = json.loads((out / "results.json").read_text())
    assert (results["protocol"], results["lr_schedule"], results["selection_targets"]) == ("official", "cosine", 30)
    assert isinstance(results["converged"], bool) and "0.1 %" in results["converged_rule"]
    metrics = read_metrics(out)
    assert metrics[1]["lr"] < metrics[0]["lr"]  # cosine decays over the run
    # the per-epoch validation is the 30-target sample; the best checkpoint is scored on every target
    val_ref = independent_eval(out, tokens, "val")
    assert results["val_targets"] == val_ref["targets"] > 30
    for key in ("loss", "top1", "top5"):
        assert math.isclose(results[f"val_{key}"], val_ref[key], rel_tol=1e-5, abs_tol=1e-6), key
    best = metrics[results["best_epoch"] - 1]
    assert not math.isclose(best["val_loss"], results["val_loss"], rel_tol=1e-9)
    # a run written before the protocol flags existed resumes as the project protocol
    old = tmp_path / "old"
    train_quixer_hybrid.main(tiny(tokens, old, "--epochs", 1, "--max_train_batches", 2))
    cfg = json.loads((old / "config.json").read_text())
    for key in ("protocol", "selection_targets"):
        cfg.pop(key)
    (old / "config.json").write_text(json.dumps(cfg))
    train_quixer_hybrid.main(tiny(tokens, old, "--epochs", 1, "--max_train_batches", 2, "--resume"))


def _perturbed_copy(tokens: Path, dest: Path) -> Path:
    """The same token files with one train token changed: same shapes and vocabulary, other data
    (as another k-means seed would give)."""
    import shutil

    shutil.copytree(tokens, dest)
    obj = torch.load(dest / "train.pt", weights_only=True)
    obj["sequences"][0, 0] = (obj["sequences"][0, 0] + 1) % 256
    obj["labels"] = obj["sequences"][:, -1].clone()
    torch.save(obj, dest / "train.pt")
    return dest


def test_runs_refuse_other_data(tokens, tmp_path):
    other = _perturbed_copy(tokens, tmp_path / "tok2")
    out = tmp_path / "run"
    run_interrupted(tiny(tokens, out, "--epochs", 2, "--max_train_batches", 2), after_epoch=1)
    config = (out / "config.json").read_text()
    with pytest.raises(UserError, match="trained on other data"):  # resuming on other tokens
        train_quixer_hybrid.main(tiny(other, out, "--epochs", 2, "--max_train_batches", 2, "--resume"))
    assert (out / "config.json").read_text() == config and len(read_metrics(out)) == 1
    train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 2, "--max_train_batches", 2, "--resume"))
    results = json.loads((out / "results.json").read_text())
    from quixer.data import data_fingerprint
    assert results["data_fingerprint"] == data_fingerprint(tokens) != data_fingerprint(other)
    with pytest.raises(UserError, match="trained on other data"):  # a finished run asked for with other tokens
        train_quixer_hybrid.main(tiny(other, out, "--epochs", 2, "--max_train_batches", 2, "--resume"))


def test_resume_extends_a_finished_run(tokens, tmp_path):
    out = tmp_path / "run"
    argv = lambda epochs, *extra: tiny(tokens, out, "--epochs", epochs, "--max_train_batches", 3,  # noqa: E731
                                       "--lr_schedule", "cosine", "--patience", 0, *extra)
    train_quixer_hybrid.main(argv(2))
    assert read_metrics(out)[-1]["lr"] > 0
    with pytest.raises(UserError, match="pass --resume to extend it to 3"):
        train_quixer_hybrid.main(argv(3))
    with pytest.raises(UserError, match="cannot be shortened"):
        train_quixer_hybrid.main(argv(1, "--resume"))
    train_quixer_hybrid.main(argv(3, "--resume"))
    results = json.loads((out / "results.json").read_text())
    assert (results["epochs_run"], results["max_epochs"], results["extended_from"]) == (3, 3, [2])
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    # the cosine is re-laid over 3 epochs: epoch 3 starts at that curve's value after 2 of 3 epochs' steps
    assert metrics[2]["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * 2 / 3)) / 2, rel=1e-6)
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    train_quixer_hybrid.main(argv(3, "--resume"))  # now finished at 3: nothing to do
    assert json.loads((out / "results.json").read_text()) == results


def test_a_trainer_start_hashes_the_data_once(tokens, tmp_path, monkeypatch):
    """The fingerprint that checks the run directory is the one the checkpoints and results.json
    record: the token files are hashed once per start, fresh or resumed."""
    import quixer.data
    import quixer.training

    real, calls = quixer.data.data_fingerprint, []

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    for module in (quixer.data, quixer.training):
        monkeypatch.setattr(module, "data_fingerprint", counted)
    out = tmp_path / "run"
    argv = tiny(tokens, out, "--epochs", 2, "--max_train_batches", 2)
    run_interrupted(argv, after_epoch=1)
    assert calls == [(str(tokens),)]
    train_quixer_hybrid.main(argv + ["--resume"])
    assert calls == [(str(tokens),)] * 2
    expected = real(tokens)
    assert json.loads((out / "results.json").read_text())["data_fingerprint"] == expected
    assert torch.load(out / "last.pt", weights_only=True)["data"]["fingerprint"] == expected


def test_resume_and_extension_read_last_pt_once(tokens, tmp_path, monkeypatch):
    """last.pt holds the model and the optimizer: the checks of the run directory and the resume
    share one read of it, whether the run resumes, extends an unfinished run or a finished one."""
    real, reads = torch.load, []

    def counted(f, *args, **kwargs):
        reads.append(Path(f).name)
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    out = tmp_path / "run"
    argv = lambda epochs, *extra: tiny(tokens, out, "--epochs", epochs, "--max_train_batches", 2, *extra)  # noqa: E731
    run_interrupted(argv(3), after_epoch=1)
    for epochs, interrupt in ((3, 2), (4, None), (5, None)):  # resume; extend unfinished; extend finished
        reads.clear()
        if interrupt:
            run_interrupted(argv(epochs, "--resume"), after_epoch=interrupt)
        else:
            train_quixer_hybrid.main(argv(epochs, "--resume"))
        assert reads.count("last.pt") == 1, (epochs, reads)
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3, 4, 5]
    assert json.loads((out / "results.json").read_text())["extended_from"] == [4]


def test_early_stopped_run_is_not_extended(tokens, tmp_path):
    out = tmp_path / "run"
    train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 6, "--patience", 1, "--lr", 0.2, "--max_train_batches", 8))
    if json.loads((out / "results.json").read_text())["stop_reason"] != "early_stop":
        pytest.skip("the run did not stop early on this platform")
    config = (out / "config.json").read_text()
    with pytest.raises(UserError, match="stopped early"):
        train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 9, "--patience", 1, "--lr", 0.2,
                                      "--max_train_batches", 8, "--resume"))
    assert (out / "config.json").read_text() == config


def test_diverging_run_stops_and_is_marked(tokens, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="loss became"):
        train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 2, "--lr", 1e30, "--max_grad_norm", 0,
                                      "--max_train_batches", 4))
    marked = json.loads((out / "diverged.json").read_text())
    assert marked["stop_reason"] == "diverged" and not (out / "results.json").exists()
    with pytest.raises(UserError, match="diverged"):
        train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 2, "--lr", 1e30, "--max_grad_norm", 0,
                                      "--max_train_batches", 4, "--resume"))


def test_model_too_large_is_refused_before_allocation(tokens, tmp_path):
    out = tmp_path / "run"
    args = tiny(tokens, out, "--epochs", 1)
    args[args.index("--qubits") + 1] = "40"
    with pytest.raises(UserError, match=r"40 qubits would need about .* GiB"):
        train_quixer_hybrid.main(args)
    assert not out.exists()  # nothing left that would block the folder


def test_tensorboard_flag(tokens, tmp_path):
    """--tensorboard writes event files where the optional package is installed, and is one
    line (nothing left behind) where it is not."""
    out, board = tmp_path / "run", tmp_path / "board"
    argv = tiny(tokens, out, "--epochs", 2, "--max_train_batches", 3, "--tensorboard", board)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="optional tensorboard package"):
            train_quixer_hybrid.main(argv)
        assert not out.exists()
        return
    train_quixer_hybrid.main(argv)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(board / "run"))
    events.Reload()
    val = [e.value for e in events.Scalars("val/loss")]
    assert val == pytest.approx([m["val_loss"] for m in read_metrics(out)])
    assert len(events.Scalars("train/step_loss")) == 2  # steps 0 of each 3-step epoch


def _run_in_terminal(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal of 120 x 40 (progress bars drawn as for a person)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    os.close(master)
    return proc.wait(timeout=300), out.decode(errors="replace")


@pytest.mark.slow
def test_a_normal_run_in_a_terminal_prints_no_warning(tokens, tmp_path):
    """In a terminal the progress bar shows the loss every 25 steps: no torch warning per step
    (reading a tensor that requires grad as a number), no warning at all on a normal run."""
    out = tmp_path / "run"
    code, text = _run_in_terminal([sys.executable, str(REPO / "train_quixer_hybrid.py"),
                                   *tiny(tokens, out, "--epochs", 1, "--max_train_batches", 30)])
    assert code == 0, text[-2000:]
    assert "epoch 1/1" in text and "loss=" in text, text[-2000:]  # the bar with its loss: a terminal
    assert "Warning" not in text and "warn" not in text.lower(), text[-2000:]


def _adam_reference(params: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float, wd: float,
                    eps: float, betas=(0.9, 0.999)) -> list[torch.Tensor]:
    """Adam with L2 weight decay written out (Kingma & Ba, bias-corrected), float64."""
    p = [x.clone() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = g + wd * p[i]
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            p[i] = p[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_adam_is_fused_for_real_models_and_equals_the_written_out_update():
    """The trainer's Adam is fused for every real parameter: a classical model's one group, Quixer's
    first group (its complex LCU coefficients, which fused Adam refuses, in a second group that keeps
    the loop); fused or not, it is Adam as written out, to rounding."""
    from quixer.baselines import build_classical_model
    from quixer.training import ADAM_EPS, _optimizer

    train = TrainConfig(lr=0.01, weight_decay=1e-3)
    lstm = build_classical_model("lstm", vocab_size=16, n_tokens=7, embedding_dim=8, hidden_dim=8, num_layers=1)
    quixer = Quixer(n_qubits=2, n_tokens=7, qsvt_polynomial_degree=1, n_ansatz_layers=1, vocabulary_size=16,
                    embedding_dimension=8)
    assert [g["fused"] for g in _optimizer(train, lstm, 10, graphed=False)[0].param_groups] == [True]
    groups = _optimizer(train, quixer, 10, graphed=False)[0].param_groups
    assert [g["fused"] for g in groups] == [True, None]
    assert groups[1]["params"] == [quixer.lcu_coefficients] and all(p.is_floating_point() for p in groups[0]["params"])
    assert len(groups[0]["params"]) + 1 == len(list(quixer.parameters()))
    old_layout = _optimizer(train, quixer, 10, graphed=False, split=False)[0].param_groups  # runs begun before
    assert len(old_layout) == 1 and old_layout[0]["fused"] is None

    lstm = lstm.double()
    start = [p.detach().clone() for p in lstm.parameters()]
    gen = torch.Generator().manual_seed(3)
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in start] for _ in range(25)]
    optimizer, _ = _optimizer(train, lstm, 25, graphed=False)
    for step_grads in grads:
        for p, g in zip(lstm.parameters(), step_grads):
            p.grad = g.clone()
        optimizer.step()
    expected = _adam_reference(start, grads, train.lr, train.weight_decay, ADAM_EPS)
    for got, want in zip(lstm.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-12)


def test_a_run_begun_unfused_resumes_unfused_bit_exactly():
    """A checkpoint of an optimizer from before fused Adam: loaded into the trainer's optimizer it
    keeps the loop implementation, so the resumed steps are the ones the old run would have made."""
    from quixer.baselines import build_classical_model
    from quixer.training import _optimizer

    train = TrainConfig(lr=0.01)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_classical_model("lstm", vocab_size=16, n_tokens=7, embedding_dim=8, hidden_dim=8, num_layers=1)

    def grads(seed: int, m: torch.nn.Module) -> None:
        gen = torch.Generator().manual_seed(seed)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=gen)

    old = model()
    old_opt = torch.optim.Adam(old.parameters(), lr=train.lr, weight_decay=train.weight_decay, eps=1e-10)
    for s in range(3):
        grads(s, old)
        old_opt.step()
    saved = copy.deepcopy(old_opt.state_dict())  # as from last.pt: not sharing the old run's tensors
    resumed = model()
    resumed.load_state_dict(old.state_dict())
    opt, _ = _optimizer(train, resumed, 10, graphed=False)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["fused"] is None
    for s in range(3, 6):
        grads(s, old)
        old_opt.step()
        grads(s, resumed)
        opt.step()
    for a, b in zip(old.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_one_process_at_a_time_trains_a_run(tokens, tmp_path):
    """The same command twice at once: the second stops in one line naming the first's pid and writes
    nothing; a lock left by a killed process blocks nothing, and a finished run leaves no lock."""
    from quixer.run_dir import _lock_path, run_lock

    out = tmp_path / "run"
    argv = [sys.executable, str(REPO / "train_quixer_hybrid.py"), *tiny(tokens, out, "--epochs", 1)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with run_lock(out):  # as a first training process holds it
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {out}: another process (pid {os.getpid()}) is training this run; wait for it to end or choose "
        "another --output_dir"]
    assert not out.exists() and not _lock_path(out).exists()

    killed = subprocess.run([sys.executable, "-c", "import os, sys; from pathlib import Path; from quixer.run_dir import "
                             "run_lock\nwith run_lock(Path(sys.argv[1])): os.kill(os.getpid(), 9)", str(out)],
                            cwd=REPO, timeout=120)
    assert killed.returncode == -9 and _lock_path(out).exists()  # its file stays, unlocked
    assert train_quixer_hybrid.main(tiny(tokens, out, "--epochs", 1)) == 0
    assert (out / "results.json").is_file() and not _lock_path(out).exists()
