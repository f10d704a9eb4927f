"""Classical neural baselines: LSTM, Transformer and FNet next-token models, and the Quixer
ablation.

Each reads the W - 1 input tokens and predicts the next token from the representation of
the last input position, exactly the task Quixer solves, and returns plain logits
``[B, vocab]``. ``quixer_ablation`` is Quixer with its quantum block replaced by a classical
pooling (:class:`QuixerAblation`, a 1,777-number block against the quantum block's 90), and
``quixer_ablation_matched`` by one with fewer trainable numbers than the quantum block
(:class:`MatchedQuixerAblation`): what the LCU + QSVT block adds is the gap between them. The ``paper96`` / ``paper128`` presets follow the baselines of the Quixer
paper (arXiv:2406.04305): embedding 96 or 128, LSTM 2 layers (hidden = embedding),
Transformer 1 layer 1 head (feed-forward 4x), FNet 2 layers (feed-forward 4x). The
``default`` preset sizes them for a 512-token vocabulary: LSTM about 220k parameters,
Transformer about 530k, FNet about 400k. A trained baseline is described by its
:class:`ClassicalConfig` (the script's flags with the preset filled in), which builds it.

The uniform / unigram / n-gram reference predictors live in :mod:`quixer.reference`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .common import UserError

NEURAL_MODELS = ("lstm", "transformer", "fnet", "quixer_ablation", "quixer_ablation_matched")
PRESETS = ("default", "paper96", "paper128")

# Size per (preset, model): embedding_dim, hidden_dim, num_layers, num_heads. The ablation
# mirrors Quixer's defaults in every preset (its angle map and features follow --qubits and
# --ansatz_layers; hidden_dim, num_layers and num_heads are not used).
_ABLATION_SIZE = dict(embedding_dim=512, hidden_dim=1, num_layers=1, num_heads=1)
_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "default": {
        "lstm": dict(embedding_dim=64, hidden_dim=96, num_layers=2, num_heads=1),
        "transformer": dict(embedding_dim=128, hidden_dim=512, num_layers=2, num_heads=4),
        "fnet": dict(embedding_dim=128, hidden_dim=512, num_layers=2, num_heads=1),
        "quixer_ablation": _ABLATION_SIZE,
        "quixer_ablation_matched": _ABLATION_SIZE,
    },
    **{
        f"paper{d}": {
            "lstm": dict(embedding_dim=d, hidden_dim=d, num_layers=2, num_heads=1),
            "transformer": dict(embedding_dim=d, hidden_dim=4 * d, num_layers=1, num_heads=1),
            "fnet": dict(embedding_dim=d, hidden_dim=4 * d, num_layers=2, num_heads=1),
            "quixer_ablation": _ABLATION_SIZE,
            "quixer_ablation_matched": _ABLATION_SIZE,
        }
        for d in (96, 128)
    },
}
# Training defaults of the Quixer paper's code for each baseline (used when a flag is not given);
# the ablation trains as Quixer does.
_TRAINING_DEFAULTS = {
    "lstm": dict(lr=0.002, dropout=0.3),
    "transformer": dict(lr=0.001, dropout=0.1),
    "fnet": dict(lr=0.002, dropout=0.1),
    "quixer_ablation": dict(lr=0.002, dropout=0.1),
    "quixer_ablation_matched": dict(lr=0.002, dropout=0.1),
}
_SIZE_KEYS = ("embedding_dim", "hidden_dim", "num_layers", "num_heads")


class LSTMModel(nn.Module):
    """Embedding -> stacked LSTM -> linear read-out of the last time step."""

    PARAMETER_GROUPS = {"embedding": ("embedding.",), "body": ("lstm.",), "head": ("project.",)}

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
    """Causal Transformer encoder with learned positions; predicts from the last position.

    Only the last position's output is read, so the final layer runs its attention for that one
    query and its feed-forward on that one position: the same function as the full layer at
    that position, without the work whose output would be dropped.
    """

    PARAMETER_GROUPS = {"embedding": ("embedding.", "position"), "body": ("encoder.",), "head": ("project.",)}

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
        *layers, last = self.encoder.layers
        for layer in layers:
            h = layer(h, src_mask=self.causal_mask[:t, :t], is_causal=True)
        return self.project(_last_position(last, h))


def _last_position(layer: nn.TransformerEncoderLayer, h: torch.Tensor) -> torch.Tensor:
    """``layer(h, causal)[:, -1]`` for a post-norm encoder layer, computing only that position
    (the last query may attend to every key, so no mask is needed)."""
    q = h[:, -1:]
    z = layer.norm1(q + layer.dropout1(layer.self_attn(q, h, h, need_weights=False)[0]))
    z = layer.norm2(z + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(z))))))
    return z[:, 0]


class FNetModel(nn.Module):
    """FNet (Lee-Thorp et al. 2021): token mixing by the real part of a 2-D Fourier transform.

    Causality is not needed inside the window: every input token precedes the target.
    """

    PARAMETER_GROUPS = {"embedding": ("embedding.", "position"), "body": ("mix_norms.", "ff_norms.", "ffs."),
                        "head": ("project.",)}

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


class _PooledAngles(nn.Module):
    """What both ablations keep of Quixer: its embedding and angle map, one weight per position
    (as the LCU has one coefficient per position), and its head; the block between the pooled
    angles and the head's 3 n features is each subclass's own."""

    def __init__(self, vocab_size: int, n_tokens: int, embedding_dim: int, qubits: int, ansatz_layers: int,
                 dropout: float) -> None:
        super().__init__()
        self.n_angles, self.n_features = 4 * qubits * ansatz_layers, 3 * qubits
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.embedding_to_angles = nn.Linear(embedding_dim, self.n_angles)
        self.position_weights = nn.Parameter(torch.rand(n_tokens))

    def _head(self, embedding_dim: int, vocab_size: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(self.n_features, embedding_dim), nn.ReLU(), nn.Linear(embedding_dim, vocab_size))

    def _init_shared(self, *linears: nn.Linear) -> None:
        """Quixer's ``small_gaussian`` for the embedding, Xavier and zero biases for the linears."""
        nn.init.normal_(self.embedding.weight, std=0.02)
        for lin in linears:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def pooled_angles(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, W]`` token ids -> ``[B, 4 n L]``: the angles summed over positions, weights l1-normalised."""
        angles = self.embedding_to_angles(self.dropout(self.embedding(x)))  # [B, W, 4 n L]
        weights = self.position_weights / self.position_weights.abs().sum().clamp_min(1e-12)
        return torch.einsum("bwa,w->ba", angles, weights)


class QuixerAblation(_PooledAngles):
    """Quixer with its quantum block replaced by a classical pooling of the same token embeddings.

    Quixer: embedding -> angle map (Linear E -> 4 n L) -> token circuits -> LCU over positions
    -> QSVT polynomial -> feed-forward circuit -> 3 n Pauli expectations -> head. Here the
    same embedding and angle map, then a trainable weighted sum over positions (one weight
    per position, as the LCU has) -> Linear(4 n L -> 3 n) -> tanh (3 n features in [-1, 1],
    like expectation values) -> the same head (Linear(3 n -> E), ReLU, Linear(E -> V)). The
    pooling is linear in the tokens: no products between positions, which is what the
    polynomial of the LCU contributes. Initialised as Quixer's ``small_gaussian`` strategy for
    the embedding (N(0, 0.02^2)) and the head (Xavier, zero biases); its angle map is Xavier too,
    where Quixer's ``small_gaussian`` draws N(0, 0.01^2).
    """

    PARAMETER_GROUPS = {"embedding": ("embedding.",), "angle_map": ("embedding_to_angles.",),
                        "pooling": ("position_weights", "to_features."), "head": ("output_feedforward.",)}

    def __init__(self, vocab_size: int, n_tokens: int, embedding_dim: int, qubits: int, ansatz_layers: int,
                 dropout: float) -> None:
        super().__init__(vocab_size, n_tokens, embedding_dim, qubits, ansatz_layers, dropout)
        self.to_features = nn.Linear(self.n_angles, self.n_features)
        self.output_feedforward = self._head(embedding_dim, vocab_size)
        self._init_shared(self.embedding_to_angles, self.to_features, *self.output_feedforward[::2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_feedforward(torch.tanh(self.to_features(self.pooled_angles(x))))


class MatchedQuixerAblation(_PooledAngles):
    """Quixer with its quantum block replaced by a classical block of fewer trainable numbers.

    :class:`QuixerAblation` replaces Quixer's 90-number quantum block (31 complex LCU
    coefficients, d + 1 polynomial coefficients, 4 n feed-forward angles at the defaults) by
    1,777 numbers; this one stays below it, so "the classical block is simply bigger" cannot
    explain a gap. Same embedding, angle map and head as Quixer; the block: a weighted sum over
    positions (one weight each, as the LCU), an elementwise polynomial of degree d of the pooled
    angles normalised by the l1 norm of its coefficients (as the QSVT polynomial: products between
    positions), a fixed seeded projection to 3 n features (not trained, like a circuit's wiring),
    then a trainable scale and offset per feature and tanh (values in [-1, 1] like expectation
    values): W - 1 + (d + 1) + 6 n numbers, 71 at the defaults.
    """

    PARAMETER_GROUPS = {"embedding": ("embedding.",), "angle_map": ("embedding_to_angles.",),
                        "pooling": ("position_weights", "polynomial", "feature_scale", "feature_offset"),
                        "head": ("output_feedforward.",)}
    PROJECTION_SEED = 0  # the fixed projection is the same for every model seed

    def __init__(self, vocab_size: int, n_tokens: int, embedding_dim: int, qubits: int, ansatz_layers: int,
                 dropout: float, degree: int = 3) -> None:
        super().__init__(vocab_size, n_tokens, embedding_dim, qubits, ansatz_layers, dropout)
        self.polynomial = nn.Parameter(torch.rand(degree + 1))
        self.feature_scale = nn.Parameter(torch.ones(self.n_features))
        self.feature_offset = nn.Parameter(torch.zeros(self.n_features))
        projection = torch.randn(self.n_angles, self.n_features,
                                 generator=torch.Generator().manual_seed(self.PROJECTION_SEED))
        self.register_buffer("projection", projection / projection.norm(dim=0, keepdim=True))
        self.output_feedforward = self._head(embedding_dim, vocab_size)
        self._init_shared(self.embedding_to_angles, *self.output_feedforward[::2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled_angles(x)  # [B, 4 n L]
        coeffs = self.polynomial / self.polynomial.abs().sum().clamp_min(1e-12)
        powers = torch.stack([pooled ** k for k in range(len(coeffs))], dim=-1)  # [B, 4 n L, d + 1]
        mixed = (powers @ coeffs) @ self.projection  # [B, 3 n]
        return self.output_feedforward(torch.tanh(self.feature_scale * mixed + self.feature_offset))


def classical_defaults(model: str, preset: str) -> dict[str, Any]:
    """What ``preset`` sizes ``model`` at, and the model's own training defaults (lr, dropout):
    the values the trainer fills in for the flags a command line leaves unset."""
    return {**_SIZES[preset][model], **_TRAINING_DEFAULTS[model]}


@dataclass(frozen=True)
class ClassicalConfig:
    """A neural baseline of train_classical_baselines.py: its flags, under the flags' own names,
    after the preset filled the unset ones (``--model lstm --preset paper96`` holds 96, 96, 2, ...).

    Built once from the command line and carried by the checkpoints (``model_config``);
    :meth:`build_model` makes the model for a vocabulary and window length. ``max_order`` is the
    script's flag for the reference predictors: unused by a neural model, recorded in config.json
    all the same.
    """

    model: str
    preset: str
    embedding_dim: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    dropout: float
    qubits: int = 6
    ansatz_layers: int = 4
    max_order: int | None = None

    def __post_init__(self) -> None:
        if self.model not in NEURAL_MODELS:
            raise UserError(f"unknown classical model {self.model!r}: choose one of {', '.join(NEURAL_MODELS)}")
        if self.preset not in PRESETS:
            raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        for key in _SIZE_KEYS + ("qubits", "ansatz_layers"):
            if getattr(self, key) < 1:
                raise UserError(f"--{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")

    def build_model(self, vocab_size: int, n_tokens: int) -> nn.Module:
        """:func:`build_classical_model` of this configuration."""
        return build_classical_model(
            self.model, vocab_size, n_tokens, embedding_dim=self.embedding_dim, hidden_dim=self.hidden_dim,
            num_layers=self.num_layers, num_heads=self.num_heads, dropout=self.dropout, qubits=self.qubits,
            ansatz_layers=self.ansatz_layers,
        )


def build_classical_model(
    name: str, vocab_size: int, n_tokens: int, *, embedding_dim: int, hidden_dim: int, num_layers: int,
    num_heads: int = 1, dropout: float = 0.1, qubits: int = 6, ansatz_layers: int = 4,
) -> nn.Module:
    """One of :data:`NEURAL_MODELS` with the given size."""
    if name == "quixer_ablation":
        return QuixerAblation(vocab_size, n_tokens, embedding_dim, qubits, ansatz_layers, dropout)
    if name == "quixer_ablation_matched":
        return MatchedQuixerAblation(vocab_size, n_tokens, embedding_dim, qubits, ansatz_layers, dropout)
    if name == "lstm":
        return LSTMModel(vocab_size, embedding_dim, hidden_dim, num_layers, dropout)
    if name == "transformer":
        return TransformerModel(vocab_size, n_tokens, embedding_dim, hidden_dim, num_layers, num_heads, dropout)
    if name == "fnet":
        return FNetModel(vocab_size, n_tokens, embedding_dim, hidden_dim, num_layers, dropout)
    raise UserError(f"unknown classical model {name!r}: choose one of {', '.join(NEURAL_MODELS)}")
