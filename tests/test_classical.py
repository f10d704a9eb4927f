"""Classical baselines: sizes of the presets, real training through the shared loop, and the
dispatch of the reference predictors from train_classical_baselines.py."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

import train_classical_baselines
from quixer.baselines import NEURAL_MODELS, PRESETS, build_classical_model
from quixer.common import UserError
from quixer.flags import resolve_classical_args
from tests.token_fixtures import make_token_dir

RESULT_KEYS = {"model", "parameters", "parameter_breakdown", "test_loss", "test_perplexity", "test_top1", "test_top5",
               "train_seconds", "train_sequences_per_second", "eval_sequences_per_second", "targets_sha256"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return make_token_dir(tmp_path_factory.mktemp("tokens"), sizes=(2000, 300, 300), max_records=300)


def sized(model: str, preset: str, vocab: int = 512, n_tokens: int = 31) -> torch.nn.Module:
    args = argparse.Namespace(model=model, preset=preset, embedding_dim=None, hidden_dim=None, num_layers=None,
                              num_heads=None, lr=None, dropout=None, qubits=6, ansatz_layers=4)
    resolve_classical_args(args)
    return build_classical_model(model, vocab, n_tokens, embedding_dim=args.embedding_dim, hidden_dim=args.hidden_dim,
                                 num_layers=args.num_layers, num_heads=args.num_heads, dropout=args.dropout,
                                 qubits=args.qubits, ansatz_layers=args.ansatz_layers)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_preset_sizes_at_vocab_512():
    counts = {(p, m): n_params(sized(m, p)) for p in PRESETS for m in NEURAL_MODELS}
    print(json.dumps({f"{p}/{m}": c for (p, m), c in counts.items()}))
    assert counts["default", "lstm"] == 219_136          # ~200k
    assert counts["default", "transformer"] == 532_096   # ~500k
    assert counts["default", "fnet"] == 400_000
    # the ablation: Quixer's embedding 512x512, angle map 512 -> 96, head 18 -> 512 -> 512, and its pooling
    assert counts["default", "quixer_ablation"] == 262_144 + 49_248 + (31 + 96 * 18 + 18) + 272_384
    # LSTM 2 layers, hidden = embedding: 512 E + 2 * 4 (2E^2 + 2E) ... + (E + 1) 512
    for e in (96, 128):
        lstm = sized("lstm", f"paper{e}")
        expected = 512 * e + (4 * e * (e + e) + 8 * e) * 2 + (e + 1) * 512
        assert n_params(lstm) == expected and lstm.lstm.num_layers == 2
        tf = sized("transformer", f"paper{e}")
        assert len(tf.encoder.layers) == 1 and tf.encoder.layers[0].self_attn.num_heads == 1
        assert tf.encoder.layers[0].linear1.out_features == 4 * e
        assert len(sized("fnet", f"paper{e}").ffs) == 2


def test_transformer_is_causal_and_reads_every_input():
    torch.manual_seed(0)
    model = sized("transformer", "paper96", vocab=64, n_tokens=10).eval()
    h = torch.randn(2, 10, 96)
    changed = h.clone()
    changed[:, 6] += 1.0
    enc = lambda z: model.encoder(z, mask=model.causal_mask, is_causal=True)  # noqa: E731
    a, b = enc(h), enc(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6), "a later token leaked into earlier positions"
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    for name in NEURAL_MODELS:
        m = sized(name, "default", vocab=64, n_tokens=10).eval()
        x = torch.randint(0, 64, (3, 10))
        y = x.clone()
        y[:, 0] = (y[:, 0] + 1) % 64
        with torch.no_grad():
            assert m(x).shape == (3, 64)
            assert not torch.allclose(m(x), m(y)), f"{name} ignores the first input token"


def test_transformer_last_position_shortcut_equals_the_full_encoder():
    torch.manual_seed(1)
    for preset in ("default", "paper96"):
        model = sized("transformer", preset, vocab=64, n_tokens=12).eval()
        x = torch.randint(0, 64, (5, 12))
        with torch.no_grad():
            h = model.embedding(x) + model.position
            full = model.project(model.encoder(h, mask=model.causal_mask, is_causal=True)[:, -1])
            assert torch.allclose(model(x), full, atol=1e-5)


def test_quixer_ablation_shares_quixer_embedding_and_head_and_learns(tokens, tmp_path):
    from quixer.model import Quixer

    quixer = Quixer(n_qubits=6, n_tokens=31, vocabulary_size=512, embedding_dimension=512)
    ablation = sized("quixer_ablation", "default")
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    for prefix in ("embedding.", "embedding_to_angles.", "output_feedforward."):
        assert {n: v for n, v in shapes(quixer).items() if n.startswith(prefix)} == \
            {n: v for n, v in shapes(ablation).items() if n.startswith(prefix)}
    out = tmp_path / "ablation"
    train_classical_baselines.main(["--model", "quixer_ablation", "--data_dir", str(tokens), "--output_dir", str(out),
                                    "--epochs", "2", "--embedding_dim", "32", "--qubits", "3", "--ansatz_layers", "2",
                                    "--lr", "0.02", "--device", "cpu"])
    results = json.loads((out / "results.json").read_text())
    assert results["parameter_breakdown"] == {"embedding": 256 * 32, "angle_map": 32 * 24 + 24,
                                              "pooling": 7 + 24 * 9 + 9, "head": 9 * 32 + 32 + 32 * 256 + 256}
    assert results["parameters"] == sum(results["parameter_breakdown"].values())
    assert results["test_loss"] < 4.8  # uniform is ln 256 = 5.55


def test_matched_ablation_block_is_no_bigger_than_the_quantum_block(tokens, tmp_path):
    from quixer.model import Quixer
    from quixer.training import parameter_breakdown

    quantum = parameter_breakdown(Quixer(n_qubits=6, n_tokens=31, vocabulary_size=512, embedding_dimension=512))
    matched = parameter_breakdown(sized("quixer_ablation_matched", "default"))
    # 31 position weights + 4 polynomial coefficients + 18 scales + 18 offsets, against 62 + 4 + 24
    assert matched["pooling"] == 31 + 4 + 2 * 18 == 71 <= quantum["quantum"] == 90
    assert {k: v for k, v in matched.items() if k != "pooling"} == \
        {k: v for k, v in quantum.items() if k != "quantum"}
    out = tmp_path / "matched"
    train_classical_baselines.main(["--model", "quixer_ablation_matched", "--data_dir", str(tokens), "--output_dir",
                                    str(out), "--epochs", "2", "--embedding_dim", "32", "--qubits", "3",
                                    "--ansatz_layers", "2", "--lr", "0.02", "--device", "cpu"])
    results = json.loads((out / "results.json").read_text())
    assert results["parameter_breakdown"]["pooling"] == 7 + 4 + 2 * 9
    assert results["test_loss"] < 5.2  # uniform is ln 256 = 5.55


def test_transformer_learns_real_data(tokens, tmp_path):
    out = tmp_path / "tf"
    train_classical_baselines.main(["--model", "transformer", "--preset", "paper96", "--data_dir", str(tokens),
                                    "--output_dir", str(out), "--epochs", "2", "--batch_size", "64",
                                    "--lr", "0.005", "--device", "cpu"])
    results = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(results) and "postselection" not in results
    assert results["model"] == "transformer" and results["parameters"] == n_params(sized("transformer", "paper96", 256, 7))
    assert math.isclose(results["test_perplexity"], math.exp(results["test_loss"]))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print([round(m["val_loss"], 3) for m in metrics], results["test_loss"])
    assert metrics[1]["val_loss"] < metrics[0]["val_loss"]
    # uniform is ln 256 = 5.55; the next token shares 3 of 4 bases with the last input token
    assert results["test_loss"] < 4.0 and results["test_top5"] > 0.5


def test_lstm_and_fnet_defaults_and_output_dirs(tokens, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--data_dir", str(tokens), "--epochs", "1", "--max_train_batches", "3", "--device", "cpu"]
    train_classical_baselines.main(["--model", "lstm", "--preset", "paper96", *common])
    config = json.loads((tmp_path / "runs" / "lstm_paper96" / "config.json").read_text())
    assert (config["embedding_dim"], config["hidden_dim"], config["num_layers"]) == (96, 96, 2)
    assert (config["lr"], config["dropout"]) == (0.002, 0.3)  # the model's own defaults
    train_classical_baselines.main(["--model", "fnet", "--hidden_dim", "64", "--dropout", "0.0", *common])
    config = json.loads((tmp_path / "runs" / "fnet" / "config.json").read_text())
    assert (config["embedding_dim"], config["hidden_dim"], config["dropout"]) == (128, 64, 0.0)
    assert json.loads((tmp_path / "runs" / "fnet" / "results.json").read_text())["epochs_run"] == 1
    with pytest.raises(UserError, match="not divisible"):
        train_classical_baselines.main(["--model", "transformer", "--embedding_dim", "30", "--num_heads", "4",
                                        "--output_dir", str(tmp_path / "bad"), *common])


def test_config_json_is_pinned(tokens, tmp_path):
    """config.json of a classical run: the same keys, values and bytes as every run directory so far
    (the preset's sizes and the model's own rate and dropout filled in, --max_order recorded too)."""
    out = tmp_path / "lstm"
    train_classical_baselines.main(["--model", "lstm", "--data_dir", str(tokens), "--output_dir", str(out),
                                    "--epochs", "1", "--max_train_batches", "2", "--device", "cpu"])
    expected = {
        "ansatz_layers": 4, "batch_size": 32, "cuda_graph": False, "data_dir": str(tokens), "device": "cpu",
        "dropout": 0.3, "embedding_dim": 64, "epoch_size": None, "epochs": 1, "eval_batch_size": 256,
        "eval_targets": 100000, "hidden_dim": 96, "lr": 0.002, "lr_schedule": "plateau", "max_grad_norm": 5.0,
        "max_order": 12, "max_train_batches": 2, "model": "lstm", "num_heads": 1, "num_layers": 2,
        "output_dir": str(out), "patience": 3, "preset": "default", "protocol": "project", "qubits": 6,
        "seed": 42, "selection_targets": 0, "tensorboard": None, "weight_decay": 0.0001,
    }
    assert (out / "config.json").read_text() == json.dumps(expected, indent=2) + "\n"


def test_checkpoint_model_config_rebuilds_the_model(tokens, tmp_path):
    """best.pt carries the resolved ClassicalConfig (the preset's sizes filled in): it alone, with the
    data's vocabulary and window, rebuilds a model that loads the weights strictly."""
    from quixer.baselines import ClassicalConfig
    from quixer.data import load_token_data

    out = tmp_path / "tf"
    train_classical_baselines.main(["--model", "transformer", "--preset", "paper96", "--num_heads", "2",
                                    "--data_dir", str(tokens), "--output_dir", str(out), "--epochs", "1",
                                    "--max_train_batches", "2", "--device", "cpu"])
    best = torch.load(out / "best.pt", weights_only=True)
    cfg = ClassicalConfig(**best["model_config"])
    assert (cfg.model, cfg.embedding_dim, cfg.hidden_dim, cfg.num_layers, cfg.num_heads, cfg.dropout) == \
        ("transformer", 96, 384, 1, 2, 0.1)
    assert {k: best["config"][k] for k in best["model_config"]} == best["model_config"]  # no renaming
    data = load_token_data(tokens)
    cfg.build_model(data.vocab_size, data.n_input_tokens).load_state_dict(best["model"], strict=True)


def test_reference_models_dispatch(tokens, tmp_path):
    for name in ("uniform", "ngram"):
        train_classical_baselines.main(["--model", name, "--data_dir", str(tokens),
                                        "--output_dir", str(tmp_path / name), "--max_order", "3"])
    uniform = json.loads((tmp_path / "uniform" / "results.json").read_text())
    ngram = json.loads((tmp_path / "ngram" / "results.json").read_text())
    assert uniform["model"] == "uniform" and math.isclose(uniform["test_perplexity"], 256.0)
    assert ngram["model"] == "ngram" and ngram["test_loss"] < 3.0
    assert not (tmp_path / "ngram" / "last.pt").exists()  # no gradient training
    assert ngram["provenance"]["command"][1:] == ["--model", "ngram", "--data_dir", str(tokens),  # as parsed
                                                  "--output_dir", str(tmp_path / "ngram"), "--max_order", "3"]
    assert uniform["test_top1"] == pytest.approx(1 / 256) and uniform["test_top5"] == pytest.approx(5 / 256)
    # the very targets the trained models are scored on
    train_classical_baselines.main(["--model", "lstm", "--data_dir", str(tokens), "--output_dir", str(tmp_path / "lstm"),
                                    "--epochs", "1", "--max_train_batches", "2", "--device", "cpu"])
    lstm = json.loads((tmp_path / "lstm" / "results.json").read_text())
    assert lstm["targets_sha256"] == ngram["targets_sha256"] == uniform["targets_sha256"]
    assert lstm["test_targets"] == ngram["test_targets"] == uniform["test_targets"] > 300
