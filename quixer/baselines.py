"""Classical neural baselines: LSTM, Transformer and FNet next-token models.

Each reads the W - 1 input tokens and predicts the next token from the representation of
the last input position, exactly the task Quixer solves, and returns plain logits
``[B, vocab]``. The ``paper96`` / ``paper128`` presets follow the baselines of the Quixer
paper (arXiv:2406.04305): embedding 96 or 128, LSTM 2 layers (hidden = embedding),
Transformer 1 layer 1 head (feed-forward 4x), FNet 2 layers (feed-forward 4x). The
``default`` preset sizes them for a 512-token vocabulary: LSTM about 220k parameters,
Transformer about 530k, FNet about 400k.

The uniform / unigram / n-gram reference predictors live in :mod:`quixer.reference`.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from .common import UserError

NEURAL_MODELS = ("lstm", "transformer", "fnet")
PRESETS = ("default", "paper96", "paper128")

# Size per (preset, model): embedding_dim, hidden_dim, num_layers, num_heads.
_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "default": {
        "lstm": dict(embedding_dim=64, hidden_dim=96, num_layers=2, num_heads=1),
        "transformer": dict(embedding_dim=128, hidden_dim=512, num_layers=2, num_heads=4),
        "fnet": dict(embedding_dim=128, hidden_dim=512, num_layers=2, num_heads=1),
    },
    **{
        f"paper{d}": {
            "lstm": dict(embedding_dim=d, hidden_dim=d, num_layers=2, num_heads=1),
            "transformer": dict(embedding_dim=d, hidden_dim=4 * d, num_layers=1, num_heads=1),
            "fnet": dict(embedding_dim=d, hidden_dim=4 * d, num_layers=2, num_heads=1),
        }
        for d in (96, 128)
    },
}
# Training defaults of the Quixer paper's code for each baseline (used when a flag is not given).
_TRAINING_DEFAULTS = {
    "lstm": dict(lr=0.002, dropout=0.3),
    "transformer": dict(lr=0.001, dropout=0.1),
    "fnet": dict(lr=0.002, dropout=0.1),
}
_SIZE_KEYS = ("embedding_dim", "hidden_dim", "num_layers", "num_heads")


class LSTMModel(nn.Module):
    """Embedding -> stacked LSTM -> linear read-out of the last time step."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(
            embedding_dim, hidden_dim, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.dropout(self.embedding(x)))
        return self.project(self.dropout(h[:, -1]))


class TransformerModel(nn.Module):
    """Causal Transformer encoder with learned positions; predicts from the last position."""

    def __init__(
        self, vocab_size: int, n_tokens: int, embedding_dim: int, hidden_dim: int, num_layers: int,
        num_heads: int, dropout: float,
    ) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise UserError(f"--embedding_dim {embedding_dim} is not divisible by --num_heads {num_heads}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.position = nn.Parameter(torch.zeros(n_tokens, embedding_dim))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embedding_dim, num_heads, hidden_dim, dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(embedding_dim, vocab_size)
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(n_tokens), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.dropout(self.embedding(x) + self.position[:t])
        h = self.encoder(h, mask=self.causal_mask[:t, :t], is_causal=True)
        return self.project(h[:, -1])


class FNetModel(nn.Module):
    """FNet (Lee-Thorp et al. 2021): token mixing by the real part of a 2-D Fourier transform.

    Causality is not needed inside the window: every input token precedes the target.
    """

    def __init__(
        self, vocab_size: int, n_tokens: int, embedding_dim: int, hidden_dim: int, num_layers: int, dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.position = nn.Parameter(torch.zeros(n_tokens, embedding_dim))
        nn.init.normal_(self.position, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.mix_norms = nn.ModuleList(nn.LayerNorm(embedding_dim) for _ in range(num_layers))
        self.ff_norms = nn.ModuleList(nn.LayerNorm(embedding_dim) for _ in range(num_layers))
        self.ffs = nn.ModuleList(
            nn.Sequential(
                nn.Linear(embedding_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, embedding_dim)
            )
            for _ in range(num_layers)
        )
        self.project = nn.Linear(embedding_dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.dropout(self.embedding(x) + self.position[:t])
        for mix_norm, ff_norm, ff in zip(self.mix_norms, self.ff_norms, self.ffs):
            h = mix_norm(h + torch.fft.fft2(h, dim=(-2, -1)).real)
            h = ff_norm(h + self.dropout(ff(h)))
        return self.project(h[:, -1])


def add_classical_model_args(parser: argparse.ArgumentParser) -> None:
    """Size flags of the neural baselines; unset flags come from ``--preset``."""
    g = parser.add_argument_group("classical model size (unset flags come from --preset)")
    g.add_argument("--preset", choices=PRESETS, default="default",
                   help="size preset: default (LSTM ~220k, Transformer ~530k, FNet ~400k parameters at "
                        "vocab 512), paper96 / paper128 (the Quixer paper's baselines) (default: %(default)s)")
    g.add_argument("--embedding_dim", type=int, default=None, help="token embedding width")
    g.add_argument("--hidden_dim", type=int, default=None,
                   help="LSTM hidden size / feed-forward width of Transformer and FNet")
    g.add_argument("--num_layers", type=int, default=None, help="LSTM / Transformer / FNet layers")
    g.add_argument("--num_heads", type=int, default=None, help="Transformer attention heads")


def resolve_classical_args(args: argparse.Namespace) -> None:
    """Fill unset size / lr / dropout flags from the preset and the model's training defaults."""
    if args.model not in NEURAL_MODELS:
        return
    for key, value in _SIZES[args.preset][args.model].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, value in _TRAINING_DEFAULTS[args.model].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in _SIZE_KEYS:
        if getattr(args, key) < 1:
            raise UserError(f"--{key} must be >= 1, got {getattr(args, key)}")


def build_classical_model(
    name: str, vocab_size: int, n_tokens: int, *, embedding_dim: int, hidden_dim: int, num_layers: int,
    num_heads: int = 1, dropout: float = 0.1,
) -> nn.Module:
    """One of :data:`NEURAL_MODELS` with the given size."""
    if name == "lstm":
        return LSTMModel(vocab_size, embedding_dim, hidden_dim, num_layers, dropout)
    if name == "transformer":
        return TransformerModel(vocab_size, n_tokens, embedding_dim, hidden_dim, num_layers, num_heads, dropout)
    if name == "fnet":
        return FNetModel(vocab_size, n_tokens, embedding_dim, hidden_dim, num_layers, dropout)
    raise UserError(f"unknown classical model {name!r}: choose one of {', '.join(NEURAL_MODELS)}")
