#!/usr/bin/env bash
# Runs every experiment in experiments/ in numeric order (or the test suite with --test).
# First use creates .venv from requirements.txt; later runs reuse it (nothing reinstalled).
set -uo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

usage() {
  cat <<USAGE
usage: bash run_all.sh [--test [PYTEST ARGS...]] [--bench[-update] [N]] [--only 04,07] [--smoke] [--device auto|cpu|cuda]
                       [--results-dir DIR] [--seeds N] [--help]

  (no option)       run every experiment on the real data in \$DATA_DIR (default ./data);
                    datasets that are missing are replaced by labelled SYNTHETIC stand-ins
  --test            run the whole pytest suite instead (what CI runs), with the quick throughput
                    benchmarks, then the throughput gate (python -m common.gate check); extra args go
                    to pytest (then a run without benchmarks passes the gate)
  --bench [N]       run the throughput benchmarks N times (default 5) and print each model's noise
  --bench-update [N]  the same, then write tests/benchmarks/baseline.json from those runs
  --only LIST       comma-separated experiment numbers, e.g. 04,07
  --smoke           each experiment's tiny configuration (seconds each)
  --device D        auto (default), cpu or cuda
  --results-dir D   where result JSONs and plots go (default ./results)
  --seeds N         number of seeds for every experiment (default: each script's own)
USAGE
}

TEST=0; BENCH=0; BENCH_UPDATE=0; ONLY=""; SMOKE=0; DEVICE=auto; RESULTS_DIR="$ROOT/results"; SEEDS=""; PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test) TEST=1; shift; PYTEST_ARGS=("$@"); break ;;
    --bench|--bench-update) [ "$1" = --bench-update ] && BENCH_UPDATE=1
                  if [[ "${2:-}" =~ ^[1-9][0-9]*$ ]]; then BENCH=$2; shift 2; else BENCH=5; shift; fi ;;
    --only) ONLY="${2:?--only needs a list like 04,07}"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --device) DEVICE="${2:?--device needs auto, cpu or cuda}"; shift 2 ;;
    --results-dir) RESULTS_DIR="${2:?--results-dir needs a folder}"; shift 2 ;;
    --seeds) SEEDS="${2:?--seeds needs a number}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$DEVICE" in auto|cpu|cuda) ;; *) echo "run_all.sh: unknown device '$DEVICE' (auto, cpu or cuda)" >&2; exit 2 ;; esac
if [ -n "$SEEDS" ] && ! [[ "$SEEDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "run_all.sh: --seeds must be a positive integer, got '$SEEDS'" >&2; exit 2
fi

# ---- bootstrap: .venv from requirements.txt, reinstalled only when requirements.txt changes
PY=${PYTHON:-python3}
STAMP=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "== setting up .venv from requirements.txt (first run: a few minutes)"
  t0=$(date +%s)
  [ -x .venv/bin/python ] || "$PY" -m venv .venv || { echo "run_all.sh: could not create .venv with $PY" >&2; exit 1; }
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt \
    || { echo "run_all.sh: pip install -r requirements.txt failed" >&2; exit 1; }
  echo "$want" > "$STAMP"
  sync  # write the new venv's gigabytes to disk now, not in the background while benchmarks are timed
  echo "== .venv ready in $(( $(date +%s) - t0 ))s"
fi
VPY="$ROOT/.venv/bin/python"
if [ -n "${DATA_DIR:-}" ]; then export DATA_DIR=$(cd "$DATA_DIR" 2>/dev/null && pwd || echo "$DATA_DIR"); fi

if [ "$TEST" = 1 ]; then
  # the whole suite, quick throughput benchmarks included; then the regression gate on their timings
  BENCH_JSON="$ROOT/.benchmarks/ci.json"
  mkdir -p "$ROOT/.benchmarks"; rm -f "$BENCH_JSON"
  echo "== pytest (DATA_DIR=${DATA_DIR:-$ROOT/data}; benchmark timings -> $BENCH_JSON)"
  "$VPY" -m pytest --benchmark-json="$BENCH_JSON" "${PYTEST_ARGS[@]}"; test_rc=$?
  GATE_ARGS=(); [ ${#PYTEST_ARGS[@]} -gt 0 ] && GATE_ARGS=(--partial)   # a chosen subset may hold no benchmarks
  echo "== throughput gate: python -m common.gate check $BENCH_JSON ${GATE_ARGS[*]}"
  "$VPY" -m common.gate check "$BENCH_JSON" "${GATE_ARGS[@]}"; gate_rc=$?
  if [ "$gate_rc" = 1 ] && [ ${#PYTEST_ARGS[@]} -eq 0 ]; then
    # A regression must show twice: time the benchmarks once more, on their own, and fail only on
    # models too slow in both runs (a passing disturbance of the machine cannot fail CI alone).
    CONFIRM_JSON="$ROOT/.benchmarks/ci-confirm.json"; rm -f "$CONFIRM_JSON"
    echo "== the gate flagged a slowdown; confirming with a second benchmark run -> $CONFIRM_JSON"
    "$VPY" -m pytest tests/benchmarks -q -p no:cacheprovider --benchmark-json="$CONFIRM_JSON" > "$ROOT/.benchmarks/ci-confirm.log" 2>&1 \
      || { tail -20 "$ROOT/.benchmarks/ci-confirm.log"; echo "run_all.sh: the confirming benchmark run failed" >&2; }
    "$VPY" -m common.gate check "$BENCH_JSON" --confirm "$CONFIRM_JSON"; gate_rc=$?
  fi
  [ "$test_rc" = 0 ] || echo "run_all.sh: pytest failed (exit $test_rc)" >&2
  [ "$gate_rc" = 0 ] || echo "run_all.sh: the throughput gate failed (exit $gate_rc)" >&2
  [ "$test_rc" = 0 ] && [ "$gate_rc" = 0 ]; exit $?
fi

if [ "$BENCH" -gt 0 ]; then
  # measure the benchmarks' noise: BENCH runs into .benchmarks/runs/, then the spread per model
  RUNS_DIR="$ROOT/.benchmarks/runs"; rm -rf "$RUNS_DIR"; mkdir -p "$RUNS_DIR"
  for i in $(seq 1 "$BENCH"); do
    echo "== benchmark run $i/$BENCH"
    "$VPY" -m pytest tests/benchmarks -q -p no:cacheprovider --benchmark-json="$RUNS_DIR/run$i.json" \
      --benchmark-columns=median,rounds > "$RUNS_DIR/run$i.log" 2>&1 \
      || { tail -30 "$RUNS_DIR/run$i.log"; echo "run_all.sh: benchmark run $i failed" >&2; exit 1; }
  done
  "$VPY" -m common.gate noise "$RUNS_DIR"/run*.json || exit $?
  if [ "$BENCH_UPDATE" = 1 ]; then "$VPY" -m common.gate update "$RUNS_DIR"/run*.json; exit $?; fi
  echo "baseline unchanged; to write it from these runs: $VPY -m common.gate update $RUNS_DIR/run*.json"
  exit 0
fi

# ---- which experiments
mapfile -t SCRIPTS < <(ls experiments/[0-9][0-9]_*.py 2>/dev/null | sort)
if [ -n "$ONLY" ]; then
  SELECTED=()
  IFS=',' read -ra WANT <<< "$ONLY"
  for n in "${WANT[@]}"; do
    n=$(printf '%02d' "$((10#$n))" 2>/dev/null) || { echo "run_all.sh: bad experiment number in --only: '$n'" >&2; exit 2; }
    match=$(printf '%s\n' "${SCRIPTS[@]}" | grep "^experiments/${n}_" || true)
    [ -n "$match" ] || { echo "run_all.sh: no experiment numbered $n (have: $(printf '%s ' "${SCRIPTS[@]##*/}"))" >&2; exit 2; }
    SELECTED+=($match)
  done
  SCRIPTS=("${SELECTED[@]}")
fi
[ ${#SCRIPTS[@]} -gt 0 ] || { echo "run_all.sh: no experiments found in experiments/" >&2; exit 1; }

# ---- real data or loud synthetic fallback
if ! "$VPY" -m common.data > /tmp/run_all_data.$$ 2>&1; then
  echo "############################################################################"
  echo "# WARNING: some real datasets are missing; those experiments run on        #"
  echo "# SYNTHETIC stand-ins, and their results are marked source=synthetic.      #"
  echo "############################################################################"
  cat /tmp/run_all_data.$$
  echo "Get the data (README.md, section Data) and set DATA_DIR to its folder."
  export SYNTHETIC_FALLBACK=1
fi
rm -f /tmp/run_all_data.$$

ARGS=(--device "$DEVICE" --results-dir "$RESULTS_DIR")
[ "$SMOKE" = 1 ] && ARGS+=(--smoke)
[ -n "$SEEDS" ] && ARGS+=(--seeds "$SEEDS")
mkdir -p "$RESULTS_DIR"
START=$(date +%s)
FAILED=(); PREFIXES=()
i=0
for s in "${SCRIPTS[@]}"; do
  i=$((i + 1)); name=$(basename "$s" .py); PREFIXES+=("${name:0:2}")
  echo "== [$i/${#SCRIPTS[@]}] $name $(printf '%s ' "${ARGS[@]}")"
  t0=$(date +%s)
  if PYTHONPATH="$ROOT" "$VPY" "$s" "${ARGS[@]}"; then
    echo "== [$i/${#SCRIPTS[@]}] $name ok in $(( $(date +%s) - t0 ))s"
  else
    rc=$?; FAILED+=("$name (exit $rc)")
    echo "== [$i/${#SCRIPTS[@]}] $name FAILED (exit $rc) after $(( $(date +%s) - t0 ))s; carrying on"
  fi
done

echo
echo "== summary ($(( $(date +%s) - START ))s in all; results in $RESULTS_DIR)"
"$VPY" -m common.summary "$RESULTS_DIR" --since "$START" --experiments "${PREFIXES[@]}" || true
if [ ${#FAILED[@]} -gt 0 ]; then
  echo
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
