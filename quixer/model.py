"""The Quixer quantum transformer (arXiv:2406.04305), simulated exactly in torch.

Quixer mixes the tokens of a window with quantum primitives. Each token id becomes a
parameterised circuit ("ansatz 14" of Sim et al. 2019) on ``n`` qubits, i.e. a unitary
``U_w``. A linear combination of unitaries (LCU) forms ``M = sum_w b_w U_w`` with trainable
complex ``b`` (L1-normalised), and the quantum singular value transformation (QSVT) applies a
trainable real polynomial: ``|psi> = sum_k c_k M^k |0> / ||c||_1``. On hardware that state is
reached only after postselection, with probability ``<psi|psi>``; here it is normalised,
passed through one more trainable circuit (the quantum feed-forward), and <X>, <Y>, <Z> on
every qubit feed a small classical head that outputs the next-token logits.

The maths is that of the official implementation (github.com/CQCL/Quixer,
``quixer/quixer_model.py``, torchquantum): same gate order, same parameter names (see
:data:`OFFICIAL_PARAMETER_NAMES`), qubit 0 the most significant bit of a basis index.

This module is the model: its configuration (:class:`QuixerConfig`, the trainer's flags, which
:meth:`Quixer.from_config` maps onto the official constructor's names), parameters,
:meth:`Quixer.forward` in the official order, initialisation, layerwise training and official
checkpoints. How the circuits are simulated lives in :mod:`quixer.sim`: gates, plans, the
autograd Functions, the polynomial and the measurement in :mod:`quixer.sim.circuits`; the
simulator chosen per device in :mod:`quixer.sim.simulators` (torch ops, the fused CPU kernel of
:mod:`quixer.sim.native`, the Triton GPU kernels of :mod:`quixer.sim.triton_kernels`), which
also owns the eval-mode cache of per-vocabulary data.

Differences from the official code, on purpose: the returned postselection probability is
per sequence and squared (``<psi|psi>``; the official code returns the batch mean of the
norm), and the unused tail of ``quantum_feedforward_parameters`` (it holds ``4 n L``
numbers but its one-layer circuit reads the first ``4 n``) is not kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import UserError
from .sim import native
from .sim.circuits import (
    CircuitPlan,
    ansatz14_gates,
    pauli_expectations,
    polynomial,
    postselect,
    to_complex,
    zero_states,
)
from .sim.simulators import Simulator, select, simulator_class

# Official parameter names -> shape, as a function of the hyper-parameters (n qubits, W tokens,
# degree d, L ansatz layers, vocabulary V, embedding E). Buffers of the torchquantum device
# (``torchquantum_device.state`` / ``.states``) also appear in official checkpoints and are ignored.
OFFICIAL_PARAMETER_NAMES = {
    "embedding.weight": lambda n, W, d, L, V, E: (V, E),
    "embedding_to_angles.weight": lambda n, W, d, L, V, E: (4 * n * L, E),
    "embedding_to_angles.bias": lambda n, W, d, L, V, E: (4 * n * L,),
    "qsvt_polynomial_coefficients": lambda n, W, d, L, V, E: (d + 1,),
    "lcu_coefficients": lambda n, W, d, L, V, E: (W,),
    "quantum_feedforward_parameters": lambda n, W, d, L, V, E: (4 * n * L,),
    "output_feedforward.0.weight": lambda n, W, d, L, V, E: (E, 3 * n),
    "output_feedforward.0.bias": lambda n, W, d, L, V, E: (E,),
    "output_feedforward.2.weight": lambda n, W, d, L, V, E: (V, E),
    "output_feedforward.2.bias": lambda n, W, d, L, V, E: (V,),
}
# Names used by the first public version of the official file, accepted as aliases.
_LEGACY_PREFIXES = {
    "emb2rot.": "embedding_to_angles.",
    "output_ff.": "output_feedforward.",
    "poly_coeffs": "qsvt_polynomial_coefficients",
    "mix_coeffs": "lcu_coefficients",
    "qff_params": "quantum_feedforward_parameters",
}
_IGNORED_OFFICIAL_PREFIXES = ("torchquantum_device.", "q_device.")
INIT_STRATEGIES = ("small_gaussian", "uniform", "xavier", "centroid")
QUIXER_TASKS = ("autoregressive",)


@dataclass(frozen=True)
class QuixerConfig:
    """A Quixer of the trainer: its flags, under the flags' own names (``--qubits`` is ``qubits``).

    Built once from the command line and carried by the checkpoints (``model_config``); the
    data gives the rest (window length, vocabulary), see :meth:`Quixer.from_config`.
    """

    qubits: int = 6
    degree: int = 3
    ansatz_layers: int = 4
    embedding_dim: int = 512
    dropout: float = 0.1
    init_strategy: str = "small_gaussian"
    use_layerwise_training: bool = False
    task: str = "autoregressive"

    def __post_init__(self) -> None:
        if self.task not in QUIXER_TASKS:
            raise UserError(f"--task {self.task!r} is not supported: the only task is 'autoregressive'")
        for key in ("qubits", "degree", "ansatz_layers", "embedding_dim"):
            if getattr(self, key) < 1:
                raise UserError(f"--{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.init_strategy not in INIT_STRATEGIES:
            raise UserError(f"--init_strategy must be one of {', '.join(INIT_STRATEGIES)}, got {self.init_strategy!r}")


def quixer_memory_bytes(qubits: int, n_tokens: int, vocab: int, degree: int, batch: int, eval_batch: int) -> int:
    """A rough upper bound of the largest allocations of a Quixer run, to refuse sizes that cannot
    fit before anything is allocated: training keeps a 2^n statevector (real and imaginary float32)
    per circuit, one circuit per (window, position), for every polynomial power and its adjoint;
    evaluation may tabulate a 2^n x 2^n unitary per vocabulary entry and per batch row."""
    dim = 2 ** qubits
    train = 8 * batch * n_tokens * dim * (degree + 2) * 3
    evaluation = 8 * (vocab + 2 * eval_batch) * dim * dim
    return max(train, evaluation)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from the fused kernel library (:mod:`quixer.sim.native`).

    torch's CPU ``bernoulli_`` makes one generator call per element, a noticeable share of a
    training step for the ``[B, W, E]`` embeddings; the kernel's counter-based generator is
    far cheaper. Its seed is drawn from torch's generator, so seeding and resuming work as before. Same distribution, other values; without
    the kernel, or off the CPU, this is ``nn.Dropout``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or not 0 < self.p < 1 or x.dtype not in (torch.float32, torch.float64)
                or not native.supports(x)):
            return super().forward(x)
        return x * native.dropout_mask(x.shape, self.p, x.dtype)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class Quixer(nn.Module):
    """Quixer next-token model: ``forward(x [B, n_tokens]) -> (logits [B, V], p_postselect [B])``."""

    INIT_STRATEGIES = INIT_STRATEGIES
    # Every parameter the circuits are built from, by name: the per-vocabulary eval cache
    # (quixer.sim.simulators.EvalCache) is rebuilt when any of them changes, and the quantum block of
    # the parameter accounting is its last three. A subclass that adds a circuit parameter lists
    # it here (extending the tuple), or the cached eval path would go on using stale tables.
    CIRCUIT_PARAMETERS = ("embedding.weight", "embedding_to_angles.weight", "embedding_to_angles.bias",
                          "lcu_coefficients", "qsvt_polynomial_coefficients", "quantum_feedforward_parameters")
    PARAMETER_GROUPS = {"embedding": ("embedding.",), "angle_map": ("embedding_to_angles.",),
                        "quantum": CIRCUIT_PARAMETERS[3:], "head": ("output_feedforward.",)}

    def __init__(
        self,
        n_qubits: int = 6,
        n_tokens: int = 31,
        qsvt_polynomial_degree: int = 3,
        n_ansatz_layers: int = 4,
        vocabulary_size: int = 512,
        embedding_dimension: int = 512,
        dropout: float = 0.1,
        dtype: torch.dtype = torch.complex64,
    ):
        super().__init__()
        if dtype not in (torch.complex64, torch.complex128):
            raise ValueError(f"dtype must be torch.complex64 or torch.complex128, not {dtype}")
        for name, value, low in (("n_qubits", n_qubits, 2), ("n_tokens", n_tokens, 1),
                                 ("qsvt_polynomial_degree", qsvt_polynomial_degree, 1),
                                 ("n_ansatz_layers", n_ansatz_layers, 1), ("vocabulary_size", vocabulary_size, 1),
                                 ("embedding_dimension", embedding_dimension, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        self.n_qubits, self.n_tokens = n_qubits, n_tokens
        self.degree, self.n_ansatz_layers = qsvt_polynomial_degree, n_ansatz_layers
        self.vocabulary_size, self.embedding_dimension = vocabulary_size, embedding_dimension
        self.angles_per_layer = 4 * n_qubits

        self.embedding = nn.Embedding(vocabulary_size, embedding_dimension, dtype=real)
        self.dropout = Dropout(dropout)
        self.embedding_to_angles = nn.Linear(embedding_dimension, self.angles_per_layer * n_ansatz_layers, dtype=real)
        self.lcu_coefficients = nn.Parameter(torch.zeros(n_tokens, dtype=dtype))
        self.qsvt_polynomial_coefficients = nn.Parameter(torch.zeros(qsvt_polynomial_degree + 1, dtype=real))
        self.quantum_feedforward_parameters = nn.Parameter(torch.zeros(self.angles_per_layer, dtype=real))
        self.output_feedforward = nn.Sequential(
            nn.Linear(3 * n_qubits, embedding_dimension, dtype=real),
            nn.ReLU(),
            nn.Linear(embedding_dimension, vocabulary_size, dtype=real),
        )
        self.active_layers = n_ansatz_layers
        self._plans: dict[int, CircuitPlan] = {}
        self._feedforward_plan = CircuitPlan(ansatz14_gates(n_qubits, 1), n_qubits)
        self._simulators: dict[str, Simulator] = {}  # by name; each holds its eval cache
        self._simulator_device: torch.device | None = None
        self._pinned_simulator: str | None = None
        self.initialize("small_gaussian")

    @classmethod
    def from_config(cls, config: QuixerConfig, n_tokens: int, vocabulary_size: int,
                    dtype: torch.dtype = torch.complex64) -> "Quixer":
        """The model of ``config`` for windows of ``n_tokens`` inputs over ``vocabulary_size`` tokens
        (the one place where the flag names meet the official constructor's), initialised as the
        constructor does: ``config.init_strategy`` is applied by the caller (it may need centroids)."""
        return cls(n_qubits=config.qubits, n_tokens=n_tokens, qsvt_polynomial_degree=config.degree,
                   n_ansatz_layers=config.ansatz_layers, vocabulary_size=vocabulary_size,
                   embedding_dimension=config.embedding_dim, dropout=config.dropout, dtype=dtype)

    # ---- simulation ----------------------------------------------------------------------

    def simulator(self) -> Simulator:
        """The simulator for the model's current device (:func:`quixer.sim.simulators.select`, or the
        pinned one), chosen on each call so that it follows ``.to(device)`` and the kernel switches."""
        device = self.embedding.weight.device
        if device != self._simulator_device:  # moved: eval caches of the old device are stale
            self._simulators, self._simulator_device = {}, device
        cls = select(device, self._pinned_simulator)
        if cls.name not in self._simulators:
            self._simulators[cls.name] = cls()
        return self._simulators[cls.name]

    def circuit_parameters(self) -> list[torch.Tensor]:
        """The tensors named by :attr:`CIRCUIT_PARAMETERS` (the eval cache's dependencies)."""
        params = dict(self.named_parameters())
        missing = [n for n in self.CIRCUIT_PARAMETERS if n not in params]
        if missing:
            raise AttributeError(f"CIRCUIT_PARAMETERS names unknown parameters: {', '.join(missing)}")
        return [params[name] for name in self.CIRCUIT_PARAMETERS]

    def use_simulator(self, name: str | None) -> None:
        """Pin the simulator ("torch", "native"; checked on use), or None to choose by device."""
        if name is not None:
            simulator_class(name)  # an unknown name fails here, not at the next forward
        self._pinned_simulator = name

    def token_plan(self) -> CircuitPlan:
        """The token circuits' plan: ansatz 14 with the active layers."""
        k = self.active_layers
        if k not in self._plans:
            self._plans[k] = CircuitPlan(ansatz14_gates(self.n_qubits, k), self.n_qubits)
        return self._plans[k]

    def token_angles(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``[...]`` -> circuit angles ``[..., 4 n k]`` of the ``k`` active layers."""
        n_angles = self.angles_per_layer * self.active_layers
        w, b = self.embedding_to_angles.weight, self.embedding_to_angles.bias
        return F.linear(self.dropout(self.embedding(x)), w[:n_angles], b[:n_angles])

    def token_unitaries(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``[N]`` -> their unitaries ``[N, 2^n, 2^n]`` (dropout applies in train mode)."""
        return self.simulator().unitaries(self.token_plan(), self.token_angles(x))

    def feedforward_unitary(self) -> torch.Tensor:
        """The quantum feed-forward circuit's unitary ``[2^n, 2^n]`` (one ansatz-14 layer)."""
        return self.simulator().unitaries(self._feedforward_plan, self.quantum_feedforward_parameters[None])[0]

    def lcu_weights(self) -> torch.Tensor:
        """LCU coefficients divided by their L1 norm (as ``F.normalize(p=1)`` in the official code)."""
        b = self.lcu_coefficients
        return b / b.abs().sum().clamp_min(1e-12)

    # ---- forward ------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, W]`` -> logits ``[B, V]`` and postselection probabilities ``[B]``, in the
        official order: embed, angles, LCU, polynomial, normalise, feed-forward, measure, head."""
        self._check_tokens(x)
        simulator = self.simulator()
        if self._cached_eval():
            features, postselection = self._cached_eval_features(x, simulator)
        else:
            angles = self.token_angles(x)  # embedding, dropout, Linear: [B, W, 4 n k]
            state = self._qsvt_state(angles, simulator)  # sum_k c_k M^k |0> / ||c||_1, M = LCU of W circuits: [B, 2^n]
            state, postselection = postselect(state)  # normalised; <psi|psi>: [B]
            state = simulator.apply_circuit(self._feedforward_plan, self.quantum_feedforward_parameters, state)
            features = pauli_expectations(state, self.n_qubits)  # <X>, <Y>, <Z> of every qubit: [B, 3 n]
        return self.output_feedforward(features), postselection  # Linear, ReLU, Linear: [B, V]

    def _cached_eval_features(self, x: torch.Tensor, simulator: Simulator) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval fast path (eval mode, no autograd): the same state, feed-forward and measurement
        from per-vocabulary data the simulator caches (each token's unitary or gate coefficients,
        the feed-forward unitary), fused into one kernel call on the CPU and GPU kernels. The cache
        is rebuilt whenever a parameter named in :attr:`CIRCUIT_PARAMETERS` changes."""
        return simulator.eval_features(self, x)

    def qsvt_state(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised LCU + QSVT state ``sum_k c_k M^k |0> / ||c||_1``, complex ``[B, 2^n]``.

        In eval mode without autograd from the simulator's cached per-vocabulary data; otherwise
        (training, or gradients requested) every token position gets its own circuit.
        """
        self._check_tokens(x)
        simulator = self.simulator()
        if self._cached_eval():
            return simulator.eval_state(self, x)
        return self._qsvt_state(self.token_angles(x), simulator)

    def _cached_eval(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def _check_tokens(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.n_tokens:
            raise ValueError(f"expected token ids of shape [batch, {self.n_tokens}], got {tuple(x.shape)}")
        if x.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be an integer tensor, got {x.dtype}")

    def _qsvt_state(self, angles: torch.Tensor, simulator: Simulator) -> torch.Tensor:
        """Every (sequence, position) has its own circuit (angles ``[B, W, P]``); each power of ``M``
        runs all ``B * W`` circuits on their sequence's state and sums them with the LCU weights."""
        batch = angles.shape[0]
        angles = angles.reshape(batch * self.n_tokens, -1)
        apply_m = simulator.lcu_operator(self.token_plan(), angles, self.lcu_weights())
        psi = zero_states(self.n_qubits, batch, angles.dtype, angles.device)
        return to_complex(polynomial(self.qsvt_polynomial_coefficients, psi, apply_m))

    def train(self, mode: bool = True) -> "Quixer":
        if mode:
            for simulator in self._simulators.values():
                simulator.cache.clear()
        return super().train(mode)

    # ---- layerwise training ---------------------------------------------------------------

    def set_active_layers(self, k: int) -> None:
        """Simulate only ansatz layers ``< k``; later layers are held at zero angles (identity)."""
        if int(k) != k or not 0 < k <= self.n_ansatz_layers:
            raise ValueError(f"active layers must be in 1..{self.n_ansatz_layers}, got {k!r}")
        self.active_layers = int(k)

    def frozen_masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask of entries that belong to inactive layers (empty if none)."""
        if self.active_layers == self.n_ansatz_layers:
            return {}
        start = self.angles_per_layer * self.active_layers
        w = torch.zeros_like(self.embedding_to_angles.weight, dtype=torch.bool)
        w[start:] = True
        b = torch.zeros_like(self.embedding_to_angles.bias, dtype=torch.bool)
        b[start:] = True
        return {"embedding_to_angles.weight": w, "embedding_to_angles.bias": b}

    # ---- initialisation -------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, strategy: str = "small_gaussian", centroids: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> None:
        """Re-initialise every parameter.

        - ``small_gaussian``: angle weights ~ N(0, 0.01^2), zero bias, feed-forward angles
          ~ N(0, 0.01^2): every circuit starts near the identity (against barren plateaus).
          Embedding ~ N(0, 0.02^2); head Xavier with zero bias.
        - ``uniform``: as the official constructor: torch's default Linear init, Xavier-uniform
          embedding, coefficients and feed-forward angles ~ U[0, 1).
        - ``xavier``: as the official training script: Xavier-uniform Linears, zero biases,
          embedding ~ N(0, 0.02^2); coefficients ~ U[0, 1).
        - ``centroid``: as ``small_gaussian``, but the embedding rows are the quantiser's
          cluster centres ``[V, D]``, centred, mapped to ``E`` by a seeded orthonormal projection
          when ``D != E``, and scaled to an entry RMS of 0.02.

        LCU coefficients (complex) and QSVT coefficients start ~ U[0, 1) in every strategy,
        as in the official code. ``generator`` (a CPU generator) makes it reproducible.
        """
        if strategy not in self.INIT_STRATEGIES:
            raise ValueError(f"unknown init strategy {strategy!r}; choose one of {', '.join(self.INIT_STRATEGIES)}")
        if strategy == "centroid" and centroids is None:
            raise ValueError("init strategy 'centroid' needs centroids (the quantiser's cluster centres [V, D])")

        def normal(p, std):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * std)

        def uniform(p, low, high):
            p.copy_(torch.rand(p.shape, generator=generator, dtype=torch.float64) * (high - low) + low)

        def xavier(p):
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
            uniform(p, -bound, bound)

        linears = [self.embedding_to_angles, self.output_feedforward[0], self.output_feedforward[2]]
        if strategy == "uniform":
            for lin in linears:  # torch's default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
                bound = 1.0 / math.sqrt(lin.in_features)
                uniform(lin.weight, -bound, bound)
                uniform(lin.bias, -bound, bound)
            xavier(self.embedding.weight)
            uniform(self.quantum_feedforward_parameters, 0.0, 1.0)
        else:
            for lin in linears:
                xavier(lin.weight)
                lin.bias.zero_()
            normal(self.embedding.weight, 0.02)
            if strategy == "xavier":
                uniform(self.quantum_feedforward_parameters, 0.0, 1.0)
            else:
                normal(self.embedding_to_angles.weight, 0.01)
                normal(self.quantum_feedforward_parameters, 0.01)
        if strategy == "centroid":
            self.embedding.weight.copy_(self._project_centroids(centroids, generator))
        uniform(self.qsvt_polynomial_coefficients, 0.0, 1.0)
        lcu = torch.complex(torch.rand(self.n_tokens, generator=generator, dtype=torch.float64),
                            torch.rand(self.n_tokens, generator=generator, dtype=torch.float64))
        self.lcu_coefficients.copy_(lcu)
        for simulator in getattr(self, "_simulators", {}).values():
            simulator.cache.clear()

    def _project_centroids(self, centroids: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        c = torch.as_tensor(centroids).detach().to("cpu", torch.float64)
        if c.dim() != 2 or c.shape[0] != self.vocabulary_size:
            raise ValueError(f"centroids must have shape [vocabulary_size={self.vocabulary_size}, D], "
                             f"got {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError("centroids contain NaN or infinite values")
        c = c - c.mean(0)
        d, e = c.shape[1], self.embedding_dimension
        if d != e:
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            q, _ = torch.linalg.qr(torch.randn(max(d, e), min(d, e), generator=gen, dtype=torch.float64))
            c = c @ (q if d > e else q.T)  # orthonormal columns (d > e) or an isometry (d < e)
        rms = c.pow(2).mean().sqrt()
        return c * (0.02 / rms) if rms > 0 else c

    # ---- official checkpoints ---------------------------------------------------------------

    @classmethod
    def from_official_state_dict(cls, state_dict: dict, n_qubits: int, n_tokens: int, qsvt_polynomial_degree: int,
                                 n_ansatz_layers: int, vocabulary_size: int, embedding_dimension: int,
                                 dropout: float = 0.1) -> "Quixer":
        """Build a model from a ``state_dict()`` of the official ``quixer.quixer_model.Quixer``.

        Names and shapes are checked against :data:`OFFICIAL_PARAMETER_NAMES` (legacy names of
        the first official version are accepted); torchquantum device buffers are ignored.
        """
        sizes = (n_qubits, n_tokens, qsvt_polynomial_degree, n_ansatz_layers, vocabulary_size, embedding_dimension)
        found = {}
        unexpected = []
        for name, value in state_dict.items():
            if name.startswith(_IGNORED_OFFICIAL_PREFIXES):
                continue
            for old, new in _LEGACY_PREFIXES.items():
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            if name in OFFICIAL_PARAMETER_NAMES:
                found[name] = torch.as_tensor(value)
            else:
                unexpected.append(name)
        missing = sorted(set(OFFICIAL_PARAMETER_NAMES) - set(found))
        if missing or unexpected:
            raise ValueError(f"not an official Quixer state dict: missing {missing}, unexpected {sorted(unexpected)}")
        for name, shape_of in OFFICIAL_PARAMETER_NAMES.items():
            if tuple(found[name].shape) != shape_of(*sizes):
                raise ValueError(f"{name}: shape {tuple(found[name].shape)} does not match the given sizes "
                                 f"(expected {shape_of(*sizes)})")
        model = cls(n_qubits, n_tokens, qsvt_polynomial_degree, n_ansatz_layers, vocabulary_size,
                    embedding_dimension, dropout=dropout, dtype=torch.complex64)
        ours = dict(found)
        ours["quantum_feedforward_parameters"] = found["quantum_feedforward_parameters"][: 4 * n_qubits]
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in ours.items()})
        return model

    def to_official_state_dict(self) -> dict[str, torch.Tensor]:
        """Our parameters under the official names and shapes (the unused feed-forward tail is 0)."""
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()}
        ff = torch.zeros(self.angles_per_layer * self.n_ansatz_layers, dtype=sd["quantum_feedforward_parameters"].dtype)
        ff[: self.angles_per_layer] = sd["quantum_feedforward_parameters"]
        sd["quantum_feedforward_parameters"] = ff
        return sd
