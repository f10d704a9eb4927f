"""Reference predictors that need no gradient training: uniform, unigram, n-gram and the ceilings.

The next 6-mer shares five bases with the last input k-mer, so the task is close to next-base
prediction. These references put every trained model's number in context: a model is only
interesting if it beats the n-gram on the same tokens.

Task and protocol (as everywhere, :mod:`quixer.streams`): the train windows are chained into
per-transcript token streams and every position of them is training data; validation and test
score the same targets as the trained models (every position with a full window of context,
or the fixed sample), with the same per-target scores (:mod:`quixer.scoring`: top-k counts
ties as expected accuracy under random tie-breaking, so uniform top-1 is exactly 1/V).

Models
------
``uniform``  p(w) = 1/V. Perplexity is exactly V. ``parameters`` = 0.

``unigram``  add-alpha smoothed frequencies of the train tokens (every position of the train
             streams, the targets the trained models draw from): p(w) = (c_w + alpha) / (N + alpha V),
             alpha picked on validation cross-entropy from ``UNIGRAM_ALPHAS``.
             ``parameters`` = V - 1 (free probabilities).

``ngram``    interpolated modified Kneser-Ney (Chen & Goodman 1998) predicting the target from the
             previous n-1 tokens, for every order n = 1 .. ``max_order``; the order is picked on
             validation cross-entropy (the smallest order within ``order_tolerance`` nats of the
             best, so indistinguishable longer contexts do not win by noise). Formula, for a
             context h (its oldest token dropped: h'):

                 P_n(w | h) = (c(h, w) - D(c(h, w)))^+ / c(h)  +  gamma(h) * P_{n-1}(w | h')
                 gamma(h)   = sum_w D(c(h, w)) / c(h)

             where c are raw counts at the highest order and continuation counts
             N1+(. h w) (number of distinct tokens seen before h w) at the lower orders;
             D(c) = D1, D2 or D3+ for c = 1, 2, >= 3, per table. A context with c(h) = 0 (unseen)
             uses P_{n-1} unchanged. The recursion ends in the uniform distribution 1/V, so P_n
             is a proper distribution over all V tokens for any discounts in [0.05, k - 0.05]
             (every token keeps mass).

             Discounts, chosen on validation with the order: each table starts from the
             count-of-counts estimate (Chen & Goodman) of its counts n1..n4 (Y = n1 / (n1 + 2 n2);
             D1 = 1 - 2Y n2/n1; D2 = 2 - 3Y n3/n2; D3+ = 3 - 4Y n4/n3, clipped to [0.05, k - 0.05]).
             That estimate approximates leave-one-out on the train counts, as if held-out
             contexts recurred like train ones; with transcripts repeating each other's exons in
             train and held-out genes from other homology groups they do not (on chrX one table's
             came out (0.06, 0.05, 2.95), at the bounds), so the discounts are then moved to
             minimise the validation cross-entropy, order by order: order n adds to order n-1's model its own raw-count
             table and the continuation table below it, and the 6 discounts of those two are
             searched (bounded L-BFGS on the exact loss and its gradient, from the count-of-counts
             values, kept unless the loss falls) with every lower table fixed. So an order's model
             never changes when higher orders are added, each order adds a handful of numbers
             fitted on validation (about 100,000 targets), and the order is then chosen on the
             validation losses of the tuned models. The test split takes no part.
             ``results.json`` records per level of the chosen order the discounts in use and the
             count-of-counts ones, and the validation loss by order with both.

             Training counts: every (context, next) pair of the train token streams, each
             position once, its context cut at the start of its transcript segment.

             ``parameters`` = stored table entries of the chosen order: for each order used
             (1..n), the number of (context, token) pairs with a nonzero count, plus one back-off
             weight per context seen, plus 3 discounts per table, plus 0 for the uniform floor.

``token_ceiling``, ``raw_bases``  the task's ceiling, read from the bases behind the tokens
             (:mod:`quixer.ceilings`): the Bayes-optimal prediction from the tokens alone under a
             base-level prior, and a next-base model that reads the raw bases. They need the
             k-mer ids of every window (stage 3's ``kmer_ids.pt``, or raw k-mer tokens). Their
             base model is the same Kneser-Ney, its discounts chosen in the same way on the next
             base of the validation windows.

Every ``results.json`` also holds the ``data_fingerprint`` of the token directory and the run's
``provenance`` (:mod:`quixer.provenance`), as the trainers' do.

The n-gram machinery itself (count tables, discounts, order choice) is :mod:`quixer.kneser_ney`,
shared with the ceilings.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .ceilings import CEILING_REFERENCES, ceiling_config, ceiling_max_order, fit_ceiling, load_kmer_map
from .common import UserError, atomic_write_json, read_json, sha256_file
from .kneser_ney import (DEFAULT_MAX_ORDER, DISCOUNT_SELECTION, Fitted, KneserNeyModel, ScoredSplit, choose_order,
                         discount_record, format_discounts, log_orders, unigram_proba)
from .data import TokenData, load_token_data
from .provenance import now, provenance
from .scoring import fixed_distribution_scores, format_perplexity, prefixed
from .streams import DEFAULT_EVAL_TARGETS
from .windows import SPLITS

log = logging.getLogger(__name__)

TOKEN_REFERENCES = ("uniform", "unigram", "ngram")
REFERENCE_MODELS = TOKEN_REFERENCES + CEILING_REFERENCES
UNIGRAM_ALPHAS = (0.01, 0.1, 0.5, 1.0, 2.0)
DEFAULT_ORDER_TOLERANCE = 1e-3


def _check_order(max_order: int, width: int) -> int:
    """``max_order`` capped at the window size (order n needs n-1 of the W-1 input tokens)."""
    if max_order < 1:
        raise UserError(f"--max_order must be >= 1, got {max_order}")
    if max_order > width:
        log.warning("ngram: --max_order %d capped at %d (windows have %d input tokens)", max_order, width, width - 1)
        return width
    return max_order


def _finished_with(output_dir: Path, config: dict) -> bool:
    """True when ``output_dir`` holds finished results of exactly this config, provenance
    recorded (a rerun is a no-op; results from before provenance was recorded are redone)."""
    if not (output_dir / "results.json").exists() or not (output_dir / "config.json").exists():
        return False
    return (read_json(output_dir / "config.json") == json.loads(json.dumps(config))
            and "provenance" in read_json(output_dir / "results.json"))


def _fit_fixed(name: str, data: TokenData, val: ScoredSplit, alphas: tuple[float, ...]) -> Fitted:
    """uniform, or unigram with add-alpha chosen on validation: one distribution for every context."""
    V = data.vocab_size
    if name == "uniform":
        p = np.full(V, 1.0 / V)
        return Fitted(val.scored.scores(*fixed_distribution_scores(p, val.targets)),
                       lambda split: fixed_distribution_scores(p, split.targets), {}, {})
    train = data.streams("train").tokens.numpy()
    best = None
    for alpha in alphas:
        p = unigram_proba(train, V, alpha)
        scores = val.scored.scores(*fixed_distribution_scores(p, val.targets))
        m = scores.metrics()
        log.info("unigram alpha=%g: val loss %.4f, perplexity %s, top-1 %.2f %%", alpha, m["loss"],
                 format_perplexity(m["perplexity"]), 100 * m["top1"])
        if best is None or scores.metrics()["loss"] < best[1].metrics()["loss"] - 1e-12:
            best = (alpha, scores, p)
    alpha, scores, p = best
    return Fitted(scores, lambda split: fixed_distribution_scores(p, split.targets), {"frequencies": V - 1},
                   {"alpha": alpha})


def _fit_ngram(data: TokenData, val: ScoredSplit, max_order: int, tolerance: float) -> Fitted:
    """Kneser-Ney tables of every order from the train streams, their discounts and the order
    chosen on validation (the smallest order within ``tolerance`` nats of the best, so longer
    contexts do not win by noise). The test split is not an argument: it cannot take part."""
    t0 = time.perf_counter()
    model = KneserNeyModel(data.vocab_size, max_order).fit_streams(data.streams("train"))
    t1 = time.perf_counter()
    tuning = model.tune_discounts(val.contexts, val.targets)
    log.info("ngram: orders 1-%d fitted in %.2f s, discounts chosen on validation in %.2f s", max_order, t1 - t0,
             time.perf_counter() - t1)
    by_order = [val.scored.scores(*arrays) for arrays in model.scores_by_order(val.contexts, val.targets).values()]
    losses = [s.metrics()["loss"] for s in by_order]
    log_orders("ngram", by_order, tuning.counted_loss)
    order = choose_order(losses, tolerance)
    if order == max_order and max_order < data.window_size:
        log.warning("ngram: the chosen order %d is the largest tried; a larger --max_order may do better", order)
    log.info("ngram: order %d chosen on validation; discounts (D1, D2, D3+) by level, lowest first: %s "
             "(count-of-counts: %s)", order, format_discounts(model.discounts(order)),
             format_discounts(model.counted_discounts(order)))

    def predict(split: ScoredSplit):
        return model.scores_by_order(split.contexts, split.targets, [order])[order]

    return Fitted(by_order[order - 1], predict, {"table": model.parameters(order)},
                   {"order": order, **discount_record(model, order), "val_loss_by_order": losses,
                    "val_loss_by_order_count_of_counts": tuning.counted_loss})


def _reference_config(name: str, data_dir: str | Path, data: TokenData, test: ScoredSplit, eval_targets_count: int | None,
                      max_order: int, order_tolerance: float,
                      unigram_alphas: tuple[float, ...]) -> tuple[dict, Callable]:
    """The run's settings (equal settings make a rerun a no-op) and the fitter ``fit(val)`` they imply."""
    config = {
        "model": name, "data_dir": str(data_dir), "vocab_size": data.vocab_size, "window_size": data.window_size,
        "n_windows": {s: int(t.shape[0]) for s, t in data.splits.items()}, "eval_targets": eval_targets_count,
        "targets_sha256": test.scored.key,
        "objective": "the next token after W-1 tokens, at the scored positions of the token streams",
        "data_sha256": {s: sha256_file(data.data_dir / f"{s}.pt") for s in SPLITS},
    }
    if name in CEILING_REFERENCES:
        kmap = load_kmer_map(data)  # before anything is written: no k-mer ids, one error line
        max_order = ceiling_max_order(name, max_order, data.window_size, kmap.k)
        config.update(ceiling_config(name, kmap, max_order, order_tolerance))
        return config, lambda val: fit_ceiling(name, data, kmap, val, test, max_order, order_tolerance)
    if name == "ngram":
        max_order = _check_order(max_order, data.window_size)
        config.update(max_order=max_order, order_tolerance=order_tolerance,
                      smoothing="interpolated modified Kneser-Ney", counts="every position of the train streams",
                      discounts=DISCOUNT_SELECTION)
        return config, lambda val: _fit_ngram(data, val, max_order, order_tolerance)
    if name == "unigram":
        config.update(unigram_alphas=list(unigram_alphas), counts="every token of the train streams")
    return config, lambda val: _fit_fixed(name, data, val, unigram_alphas)


def run_reference(
    name: str,
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    max_order: int = DEFAULT_MAX_ORDER,
    eval_targets_count: int | None = DEFAULT_EVAL_TARGETS,
    order_tolerance: float = DEFAULT_ORDER_TOLERANCE,
    unigram_alphas: tuple[float, ...] = UNIGRAM_ALPHAS,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Fit reference ``name`` on the train streams, choose its hyperparameters on val, score
    the test targets; write ``config.json``, ``results.json`` and the per-target score files
    (the format the trainers write, with the same ``data_fingerprint`` and ``provenance``:
    ``command`` as the script parsed it). Returns the results dict."""
    started = now()
    if name not in REFERENCE_MODELS:
        raise UserError(f"unknown reference model {name!r}: choose from {', '.join(REFERENCE_MODELS)}")
    data = load_token_data(data_dir)
    val, test = (ScoredSplit.of(data, s, eval_targets_count) for s in ("val", "test"))
    config, fit = _reference_config(name, data_dir, data, test, eval_targets_count, max_order, order_tolerance,
                                    unigram_alphas)
    output_dir = Path(output_dir)
    if _finished_with(output_dir, config):
        log.info("%s: %s already fitted on the same data with the same settings; results.json kept", output_dir, name)
        return read_json(output_dir / "results.json")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").unlink(missing_ok=True)  # never leave results of other settings
    atomic_write_json(output_dir / "config.json", config)

    t0 = time.perf_counter()
    fitted = fit(val)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_scores = test.scored.scores(*fitted.predict(test))
    eval_seconds = time.perf_counter() - t1
    results = {
        "model": name, "seed": None, "data_dir": str(data_dir), "data_fingerprint": data.fingerprint,
        "parameters": int(sum(fitted.parameters.values())), "parameter_breakdown": fitted.parameters,
        **prefixed("test", test_scores.metrics()), "test_targets": len(test_scores), "targets_sha256": test.scored.key,
        "train_seconds": train_seconds, "eval_sequences_per_second": len(test_scores) / max(eval_seconds, 1e-9),
        **prefixed("val", fitted.val.metrics()), "vocab_size": data.vocab_size, **fitted.extra,
        "provenance": provenance(started, command=command),
    }
    fitted.val.save(output_dir / "val_scores.npz")
    test_scores.save(output_dir / "test_scores.npz")
    atomic_write_json(output_dir / "results.json", results)
    log.info("%s: test loss %.4f, perplexity %s, top-1 %.2f %%, top-5 %.2f %%", name, results["test_loss"],
             format_perplexity(results["test_perplexity"]), 100 * results["test_top1"], 100 * results["test_top5"])
    return results
