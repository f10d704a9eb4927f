#!/usr/bin/env bash
# The converged chrX campaign: run_pipeline.sh under the official protocol on the benchmark set,
# every phase from a worktree at its pinned commit (so later changes to this checkout cannot
# change a run half way), in the background under nice; rerun `start` after any interruption and
# the pipeline resumes every run from its last epoch checkpoint (bit-exact on the same machine).
#
#   bash bench/campaign_chrX.sh start     start (or resume) the phases in the background
#   bash bench/campaign_chrX.sh status    finished / running / pending runs and the wall time so far
#   bash bench/campaign_chrX.sh references  the references (ceilings included) with this checkout's
#                                         code on the campaign's own tokens (a minute or two)
#   bash bench/campaign_chrX.sh publish   copy finished runs' results into docs/benchmark_chrX/, write
#                                         its report (results.md, results.json, plots), the
#                                         README's table (bench/campaign_readme.py) and the Quixer
#                                         runs' LCU weights (bench/lcu_weights.py, lcu_weights.md)
#   bash bench/campaign_chrX.sh stop      stop the background campaign (resumable)
#
# Phases: bench/campaign_chrX.phases (name, commit, run_pipeline.sh flags), run in order; a phase
# named &NAME starts together with the phase before it (the next plain phase waits for both), for a
# phase that keeps only one core busy. Phases that run together share out/: the data stages they
# share must be finished by an earlier phase. Work
# goes to $CAMPAIGN_DIR (default: campaign_chrX beside this checkout): code-<commit>/ worktrees,
# out/ (the pipeline's --out), logs/, wall.log (start and end of every invocation),
# heartbeat.log (a time stamp a minute while it runs: the wall time so far). Published
# runs are copied back into out/ by `start`, so a fresh machine skips them. CAMPAIGN_FASTA,
# CAMPAIGN_PHASES, CAMPAIGN_PUBLISH and CAMPAIGN_README override the input, the phase list, where
# runs are published and the file whose table publish rewrites (the tests run a tiny campaign
# that way).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${CAMPAIGN_DIR:-$(dirname "$repo")/campaign_chrX}"
py="${PYTHON:-$repo/.venv/bin/python}"
fasta="${CAMPAIGN_FASTA:-$(dirname "$repo")/shared/data/grch38_chrX_refseq_rna.fasta.gz}"
phases="${CAMPAIGN_PHASES:-$repo/bench/campaign_chrX.phases}"
published="${CAMPAIGN_PUBLISH:-$repo/docs/benchmark_chrX}"
readme="${CAMPAIGN_README:-$repo/README.md}"
out="$root/out"

phase_lines() { grep -v '^\s*#' "$phases" | grep -v '^\s*$'; }
status_lines() { "$py" "$repo/bench/campaign_status.py" "$root" --phases "$phases" --costs "$repo/bench/campaign_chrX.costs"; }

worktree() {  # worktree COMMIT: a checkout of the pinned commit (made once)
  local dir="$root/code-$1"
  if [ ! -e "$dir/run_pipeline.sh" ]; then
    rm -rf "$dir"; git -C "$repo" worktree prune
    git -C "$repo" worktree add --detach "$dir" "$1" >/dev/null 2>&1 || { echo "error: cannot check out $1" >&2; exit 1; }
  fi
  echo "$dir"
}

restore() {  # published runs back into out/, so the pipeline finds them finished (the trained seed
  # runs; in runs/ the published references come from a later commit than the phase: not restored)
  local folder d pattern
  for folder in runs runs_raw; do
    [ -d "$published/$folder" ] || continue
    pattern='*/results.json'; [ "$folder" = runs ] && pattern='*/seed_*/results.json'
    (cd "$published/$folder" && find . -path "$pattern") | while read -r f; do
      d="$(dirname "$f")"
      [ -f "$out/$folder/$d/results.json" ] && continue
      mkdir -p "$out/$folder/$d" && cp "$published/$folder/$d"/* "$out/$folder/$d/"
    done
  done
}

run_phase() {  # run_phase NAME CODE FLAGS: one run_pipeline.sh invocation from its worktree
  echo "$(date -u +%FT%TZ) start $1 ${2##*/code-}" >> "$root/wall.log"
  # shellcheck disable=SC2086
  PYTHON="$py" nice -n 19 bash "$2/run_pipeline.sh" --fasta "$fasta" --out "$out" $3 \
    >> "$root/logs/$1.log" 2>&1 || { echo "$(date -u +%FT%TZ) failed $1" >> "$root/wall.log"; return 1; }
  echo "$(date -u +%FT%TZ) end $1" >> "$root/wall.log"
}

run_group() {  # the phases of "${group[@]}" at once; fails if any of them fails
  local line name commit flags code pids=() failed=0 pid
  for line in "${group[@]}"; do
    read -r name commit flags <<< "$line"
    code="$(worktree "$commit")" || return 1
    run_phase "${name#&}" "$code" "$flags" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return "$failed"
}

drive() {  # the phases in order; a phase named &NAME starts together with the one before it
  local name commit flags group=()
  (while sleep 60; do date +%s >> "$root/heartbeat.log"; done) &
  date +%s >> "$root/heartbeat.log"
  while read -r name commit flags; do
    if [ "${name#&}" = "$name" ] && [ "${#group[@]}" -gt 0 ]; then run_group || return 1; group=(); fi
    group+=("$name $commit $flags")
  done < <(phase_lines)
  [ "${#group[@]}" -eq 0 ] || run_group
}

case "${1:-}" in
  start)
    [ -f "$fasta" ] || { echo "error: $fasta: file not found (set CAMPAIGN_FASTA)" >&2; exit 2; }
    [ -x "$py" ] || { echo "error: $py: no Python interpreter (run setup.sh, or set PYTHON)" >&2; exit 2; }
    if [ -f "$root/driver.pid" ] && kill -0 "$(cat "$root/driver.pid")" 2>/dev/null; then
      echo "campaign already running (pid $(cat "$root/driver.pid")); see: bash $0 status" >&2; exit 0
    fi
    mkdir -p "$root/logs" "$out"
    restore
    export -f drive run_group run_phase worktree phase_lines
    export root repo py fasta phases out
    setsid bash -c drive > "$root/logs/driver.log" 2>&1 < /dev/null &
    echo $! > "$root/driver.pid"
    echo "campaign started (pid $!): $root; progress: bash $0 status" >&2 ;;
  status)
    status_lines ;;
  references)
    # the references need no training: they follow this checkout's code, not the pinned commit,
    # on the campaign's own tokens (stage 3 only adds kmer_ids.pt, which the ceilings read; the
    # token files and their metadata stay as the pinned stage made them)
    tok="$out/quantized_embeddings_autoregressive"
    [ -d "$tok" ] || { echo "error: no campaign tokens yet in $out" >&2; exit 2; }
    "$py" "$repo/quantize_lambeq_embeddings.py" --input_dir "$out/lambeq_embeddings_autoregressive" --output_dir "$tok"
    for ref in uniform unigram ngram token_ceiling raw_bases; do
      "$py" "$repo/train_classical_baselines.py" --model "$ref" --data_dir "$tok" --output_dir "$root/references/runs/$ref"
    done ;;
  publish)
    mkdir -p "$published/runs"
    copy_run() {  # copy_run FROM TO: the light files of one finished run
      mkdir -p "$2"
      for x in config.json metrics.jsonl results.json test_scores.npz; do
        [ -f "$1/$x" ] && cp "$1/$x" "$2/"
      done
      return 0
    }
    (cd "$out/runs" && find . -path '*/seed_*/results.json') | while read -r f; do
      d="$(dirname "$f")"; copy_run "$out/runs/$d" "$published/runs/$d"
    done
    if [ -d "$out/runs_raw" ]; then  # the raw track: its references ran at its own (later) commit
      (cd "$out/runs_raw" && find . -name results.json) | while read -r f; do
        d="$(dirname "$f")"; copy_run "$out/runs_raw/$d" "$published/runs_raw/$d"
      done
    fi
    if [ -d "$root/references/runs" ]; then
      for r in "$root/references/runs"/*/; do
        [ -f "$r/results.json" ] && copy_run "$r" "$published/runs/$(basename "$r")"
      done
    fi
    cp "$out/autoregressive_data/metadata.json" "$published/stage1_metadata.json" 2>/dev/null || true
    cp "$root/wall.log" "$published/wall.log" 2>/dev/null || true
    status_lines > "$published/status.txt"
    raw=(); [ -d "$published/runs_raw" ] && raw=(--raw_runs "$published/runs_raw")
    state="campaign in progress"  # complete once status counts every planned run finished
    tail -n 1 "$published/status.txt" | grep -Eq '^([0-9]+) finished, 0 running, 0 interrupted, 0 pending of \1 runs' \
      && state="campaign complete"
    "$py" "$repo/report_results.py" "$published/runs" "${raw[@]}" --output_dir "$published" \
      --title "chrX, official protocol ($state: see status.txt)" > /dev/null
    "$py" "$repo/bench/campaign_readme.py" "$readme" "$published"
    quixer=(); for d in out/runs/quixer out/runs_raw/quixer; do [ -d "$root/$d" ] && quixer+=("$d"); done
    if [ ${#quixer[@]} -gt 0 ]; then  # where the finished Quixers put their LCU and polynomial weight
      { printf '# Quixer: LCU and polynomial weight beside postselection\n\n`python bench/lcu_weights.py'
        printf ' %s' "${quixer[@]}"; printf ' --finished`, in the campaign folder (it reads the best checkpoints,'
        printf ' which are not published).\n\n'
        (cd "$root" && "$py" "$repo/bench/lcu_weights.py" "${quixer[@]}" --finished --json "$published/lcu_weights.json")
      } > "$published/lcu_weights.md.tmp" && mv "$published/lcu_weights.md.tmp" "$published/lcu_weights.md"
    fi
    echo "published $(find "$published"/runs* -name results.json | wc -l) finished runs to $published ($state)" >&2 ;;
  stop)
    if [ -f "$root/driver.pid" ]; then kill -- -"$(cat "$root/driver.pid")" 2>/dev/null || true; rm -f "$root/driver.pid"; fi
    echo "campaign stopped; resume with: bash $0 start" >&2 ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
     [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] || exit 2 ;;
esac
