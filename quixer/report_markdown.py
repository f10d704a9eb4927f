"""``results.md``: the report's rows (:mod:`quixer.report_rows`) as Markdown tables and sentences.

Every table says what its numbers are (means over seeds, 95 % intervals, paired or not), and the
method note at the end says how they were made, so the file can be read without the code.
"""
from __future__ import annotations

import math
from typing import Any

from .kneser_ney import format_discounts
from .report_rows import CEILING, GAIN_SHARE_FROM, Report, _finite, is_reference, raw_tokens_name

METHOD_NOTE = (
    "Every model is scored on the same test targets: every position of the test transcripts with a full "
    "window of context, or a fixed sample of them. Novel: the targets whose context (its last 32 bases) "
    "occurs in no train transcript. Values are means over seeds; [95 % intervals] add the variance over test "
    "gene groups (a bootstrap of transcripts sharing sequence) to the variance between seeds (t quantile; with "
    "one seed, groups only); the differences against Quixer are paired (the same groups in every replicate). "
    "Top-k counts ties as expected accuracy under random tie-breaking; perplexity = exp(mean cross-entropy in "
    "nats, over seeds too); parameters are trainable real numbers (a complex one counts twice), references count "
    "stored table entries, and show the settings they chose on validation (n-gram order, add-α). Stopped: epochs "
    "run of the most allowed, each seed's best epoch, early stops, how many seeds converged (results.json's "
    "converged_rule), the protocol and learning-rate schedule. Share of the achievable gain: "
    "(model - unigram) / (ceiling - unigram), in top-1 and in loss: 0 is the unigram, 1 the ceiling estimate "
    "(exact inference from the input tokens under a base model of bounded order, which a model reading longer "
    "context can pass; on raw k-mer tokens, which hide no base, the "
    "next-base model raw_bases). Rows marked raw are the same windows as raw k-mer tokens (run_pipeline.sh "
    "--tokens raw or both), against their own references."
)


def _pct(value: Any) -> str:
    v = _finite(value)
    return "–" if v is None else f"{100 * v:.2f} %"


def _num(value: Any, digits: int = 2) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isinf(value):
        return "∞"
    v = _finite(value)
    return "–" if v is None else f"{v:,.{digits}f}"


def _count(value: Any) -> str:
    v = _finite(value)
    return "–" if v is None else f"{int(round(v)):,}"


def _duration(value: Any) -> str:
    v = _finite(value)
    if v is None:
        return "–"
    if v < 120:
        return f"{v:.2f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.2f} h"


def _ci(ci: Any, scale: float = 100.0, digits: int = 2) -> str:
    if not isinstance(ci, list) or len(ci) != 2 or any(_finite(v) is None for v in ci):
        return ""
    return f" [{scale * ci[0]:,.{digits}f}, {scale * ci[1]:,.{digits}f}]"


def _difference(d: dict | None, scale: float) -> str:
    """``mean [lo, hi]`` of a paired difference (``–`` where there is none)."""
    if not d or _finite(d.get("mean")) is None:
        return "–"
    return _num(scale * d["mean"]) + _ci(d.get("ci95"), scale)


def _table(header: list[str], align: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + \
        ["| " + " | ".join(cells) + " |" for cells in lines]


def model_label(row: dict[str, Any]) -> str:
    """The model, and for a reference what it chose on validation: ``ngram (reference, order 5)``."""
    if not is_reference(row):
        return row["model"]
    chosen = ([f"order {row['order']}"] if row.get("order") is not None else []) + \
        ([f"add-α {row['alpha']:g}"] if _finite(row.get("alpha")) is not None else [])
    return f"{row['model']} (reference{''.join(', ' + c for c in chosen)})"


def stopped(row: dict[str, Any]) -> str:
    """How a trained row's seeds ran, e.g. ``30/30 epochs, best 28/30/30, converged 3 of 3 seeds
    (official, cosine)``; ``–`` for references."""
    reasons = row.get("stop_reasons")
    if not reasons:
        return "–"
    n = len(reasons)
    runs = [e for e in row.get("epochs_run", []) if isinstance(e, int)]
    span = "?" if not runs else str(runs[0]) if min(runs) == max(runs) else f"{min(runs)}–{max(runs)}"
    most = row.get("max_epochs")
    text = f"{span}/{most} epochs" if isinstance(most, int) else f"{span} epochs"
    best = [str(b) for b in row.get("best_epochs", []) if b is not None]
    if best:
        text += f", best {'/'.join(best)}"
    early = sum(1 for r in reasons if r == "early_stop")
    if early:
        text += f", early stop {early} of {n}"
    text += f", converged {row.get('converged', 0)} of {n} seed{'s' if n > 1 else ''}"
    how = [v for v in (row.get("protocol"), row.get("lr_schedule")) if isinstance(v, str)]
    text += f" ({', '.join(how)})" if how else ""
    if row.get("diverged_seeds"):
        text += f"; diverged: {', '.join(row['diverged_seeds'])}"
    return text


def _main_table(rows: list[dict[str, Any]]) -> list[str]:
    show_data = len({r.get("data") for r in rows}) > 1 or len({r["data_fingerprint"] for r in rows
                                                                 if r.get("data_fingerprint")}) > 1
    show_post = any("postselection" in r for r in rows)
    header = ["Model", "Run"] + (["Data"] if show_data else []) + [
        "Seeds", "Test top-1 [95 % CI]", "Test top-5", "Test perplexity [95 % CI]", "Novel top-1", "Novel top-5",
        "Novel perplexity", "Novel share", "Stopped"] + (["Postselection"] if show_post else [])
    lines = []
    for r in rows:
        cells = [model_label(r), r["run"]] + ([r.get("data_label", "–")] if show_data else [])
        cells += [str(len(r.get("seeds", []))) if r.get("seeds") else "–",
                  _pct(r.get("test_top1")) + _ci(r.get("test_top1_ci95")), _pct(r.get("test_top5")),
                  _num(r.get("test_perplexity")) + _ci(r.get("test_perplexity_ci95"), 1.0),
                  _pct(r.get("novel_test_top1")), _pct(r.get("novel_test_top5")), _num(r.get("novel_test_perplexity")),
                  _pct(r.get("novel_fraction")), stopped(r)]
        if show_post:
            cells.append(_pct(r.get("postselection")))
        lines.append(cells)
    return _table(header, ["---"] * (2 + show_data) + ["---:"] * 8 + ["---"] + ["---:"] * show_post, lines)


def _diverged_lines(report: Report) -> list[str]:
    """Diverged runs: named with their message, not left out silently."""
    if not report.diverged:
        return []
    items = [f"{d['run']}" + (f" {d['seed_dir']}" if d.get("seed_dir") else "") +
             (f" ({d['message']})" if d.get("message") else "") for d in report.diverged]
    return ["", "Diverged (training stopped on a non-finite loss; no results, so in no table): "
            + "; ".join(items) + "."]


def _unconverged_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The seeds that did not meet the convergence rule, each with the two drops the rule tests."""
    lines = []
    for r in rows:
        for u in r.get("not_converged") or []:
            drops = (u.get("last_drops") or [])[-2:]
            lines.append([r["run"], str(u.get("seed")), str(u.get("stop_reason")), str(u.get("epochs_run"))]
                         + ["–"] * (2 - len(drops)) + [f"{100 * d:.3f} %" for d in drops])
    if not lines:
        return []
    return ["", "Seeds that did not converge by the rule (results.json's converged_rule): what each of their last two "
            "epochs took off the validation (selection) loss, as a share of the epoch before (the rule asks for "
            "less than 0.1 % each):", ""] + _table(
        ["Run", "Seed", "Stopped", "Epochs", "Second-last epoch", "Last epoch"],
        ["---", "---:", "---", "---:", "---:", "---:"], lines)


def _anatomy_line(row: dict[str, Any]) -> str:
    """The task's anatomy a ceiling reference measured, in one sentence ("" where it has none)."""
    a, k = row.get("anatomy") or {}, row.get("k")
    if not a:
        return ""
    return (f" For {_pct(a.get('candidate_tokens_fewer_than_4'))} of its targets the 4 possible next k-mers fall into "
            f"fewer than 4 tokens; the input tokens pin down the last {'k-1' if k is None else k - 1} bases for "
            f"{_pct(a.get('last_bases_pinned'))}.")


def _ceiling_sentence(r: dict[str, Any]) -> str | None:
    """What a ceiling reference says, in words: on quantised tokens token_ceiling is the ceiling and
    raw_bases sees more than the tokens; on raw k-mers raw_bases is the ceiling."""
    levels = f"{_pct(r.get('test_top1'))} top-1, perplexity {_num(r.get('test_perplexity'))}"
    order = r.get("order", "?")
    if r.get("track", "quantized") == "raw":
        if r["model"] == CEILING["raw"]:
            return (f"On raw k-mers ({r['run']}) the tokens hide no base: the ceiling estimate is the next-base model "
                    f"of order {order}, {levels}.")
        return None
    if r["model"] == "token_ceiling":
        return (f"The task's ceiling estimate ({r['run']}): the best prediction from the input tokens if the bases "
                f"followed its base model of order {order} (exact inference over the bases behind the tokens) is "
                f"{levels}. A model that finds structure beyond that order can pass it (the Δ column below)."
                + _anatomy_line(r))
    if r["model"] == "raw_bases":
        return (f"A next-base model that reads the raw bases ({r['run']}, order {order}) reaches {levels}: it sees "
                "more than the tokens say.")
    return None


def _ngram_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What each n-gram reference chose on validation (its order and discounts), one sentence each."""
    lines = [f"The n-gram ({r['run']}): interpolated modified Kneser-Ney of order {r['order']}; the order and the "
             f"discounts (D1, D2, D3+ per level, lowest first) chosen on validation: {format_discounts(r['discounts'])}."
             for r in rows if r["model"] == "ngram" and "order" in r and r.get("discounts")]
    return [""] + lines if lines else []


def _ceiling_table(rows: list[dict[str, Any]]) -> list[str]:
    """The ceiling references in words, then every row's share of the achievable gain."""
    lines = [""] + [s for r in rows if (s := _ceiling_sentence(r))]
    shared = [r for r in rows if r.get("gain_share_top1") is not None or r.get("gain_share_loss") is not None]
    if not shared:
        return lines if len(lines) > 1 else []
    table = [[r["model"], r["run"], _num(None if r.get("gain_share_top1") is None else 100 * r["gain_share_top1"], 1),
              _num(None if r.get("gain_share_loss") is None else 100 * r["gain_share_loss"], 1),
              _difference(r.get("ceiling_top1_difference"), 100), _difference(r.get("ceiling_perplexity_difference"), 1.0)]
             for r in shared]
    intro = (f"Share of the achievable gain, (model − {GAIN_SHARE_FROM}) / (ceiling − {GAIN_SHARE_FROM}), in %, and "
             f"each model minus the ceiling, paired on the same targets (ceiling: {CEILING['quantized']} on quantised "
             f"tokens, {CEILING['raw']} on raw k-mers; top-1 in points):")
    return lines + ["", intro, ""] + _table(
        ["Model", "Run", "top-1", "loss", "Δ top-1 vs ceiling [95 % CI]", "Δ perplexity vs ceiling [95 % CI]"],
        ["---", "---", "---:", "---:", "---:", "---:"], table)


def _paired_table(rows: list[dict[str, Any]]) -> list[str]:
    paired = [r for r in rows if "quixer_top1_difference" in r]
    if not paired:
        return []
    lines = [[r["model"], r["run"], _difference(r["quixer_top1_difference"], 100),
              _difference(r["quixer_perplexity_difference"], 1.0)] for r in paired]
    return ["", "Quixer minus each model, paired on the same targets (within a track; top-1 in points; a negative "
            "perplexity difference favours Quixer):", ""] + _table(
        ["Model", "Run", "Δ top-1 [95 % CI]", "Δ perplexity [95 % CI]"], ["---", "---", "---:", "---:"], lines)


def _tokenisation_table(report: Report) -> list[str]:
    """Raw minus quantised per run trained on both tracks, paired where the positions agree."""
    if not report.tokenisation:
        return []
    raw = raw_tokens_name([r for e in report.entries if e.track == "raw" for r in e.results])
    lines = [[d["model"], d["quantized_run"], _difference(d.get("top1_difference"), 100),
              _difference(d.get("perplexity_difference"), 1.0),
              d["paired_on"] or f"not paired: {d.get('not_paired')}"] for d in report.tokenisation]
    return ["", f"### Tokenisation: {raw} minus quantised tokens", "",
            "Each run trained on both tracks, raw minus quantised, paired target by target on the same scored "
            "positions (a bootstrap over the shared test gene groups plus both rows' seed variance); no difference "
            "where the positions differ. The raw track predicts the next k-mer itself, the quantised one its token "
            "(a coarser target): a positive top-1 difference favours the raw tokens, a negative perplexity "
            "difference too (top-1 in points):", ""] + _table(
        ["Model", "Run", "Δ top-1 [95 % CI]", "Δ perplexity [95 % CI]", "Paired on"],
        ["---", "---", "---:", "---:", "---"], lines)


def _cost_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        parts = r.get("parameter_breakdown") or {}
        lines.append([r["model"], r["run"], _count(r.get("parameters")),
                      ", ".join(f"{k} {v:,}" for k, v in parts.items()) or "–", _duration(r.get("train_seconds")),
                      _count(r.get("train_sequences_per_second")), _count(r.get("eval_sequences_per_second"))])
    return ["", "Parameters by component and cost (per seed; train seq/s: windows per second of optimisation, "
            "eval seq/s: scored targets per second):", ""] + _table(
        ["Model", "Run", "Parameters", "Components", "Train time", "Train seq/s", "Eval seq/s"],
        ["---", "---", "---:", "---", "---:", "---:", "---:"], lines)


def markdown_report(report: Report, title: str | None = None, links: list[str] | None = None) -> str:
    """The rows as Markdown: the results with intervals, diverged runs, the ceiling and each row's
    share of the achievable gain, the paired differences against Quixer and between the tracks, the
    costs, the method."""
    rows = report.rows
    lines = [f"## {title}", ""] if title else []
    lines += (_main_table(rows) + _diverged_lines(report) + _unconverged_lines(rows) + _ngram_lines(rows) + _ceiling_table(rows) + _paired_table(rows)
              + _tokenisation_table(report) + _cost_table(rows) + ["", METHOD_NOTE])
    if links:
        lines += [""] + links
    return "\n".join(lines) + "\n"


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The report's headline in one table (the README's results section): per row its seeds, test
    top-1 and perplexity with intervals, its paired difference from its track's ceiling, how many
    seeds converged and its training compute summed over seeds (in hours: one unit down the column)."""
    tracks = len({r.get("track", "quantized") for r in rows}) > 1
    lines = []
    for r in rows:
        seeds = r.get("seeds") or []
        reasons = r.get("stop_reasons") or []
        compute = None if not seeds or _finite(r.get("train_seconds")) is None else r["train_seconds"] * len(seeds)
        lines.append([model_label(r)] + ([r.get("track", "quantized")] if tracks else []) + [
            str(len(seeds)) if seeds else "–",
            _pct(r.get("test_top1")) + _ci(r.get("test_top1_ci95")),
            _num(r.get("test_perplexity")) + _ci(r.get("test_perplexity_ci95"), 1.0),
            _difference(r.get("ceiling_top1_difference"), 100),
            f"{r.get('converged', 0)} of {len(reasons)}" if reasons else "–",
            f"{compute / 3600:.2f} h" if reasons and compute is not None else "–"])
    header = ["Model"] + (["Track"] if tracks else []) + [
        "Seeds", "Test top-1 [95 % CI]", "Test perplexity [95 % CI]", "Δ top-1 vs ceiling, points [95 % CI]", "Converged",
        "Training compute"]
    align = ["---"] * (1 + tracks) + ["---:"] * 6
    return "\n".join(_table(header, align, lines)) + "\n"
