#!/usr/bin/env bash
# Runs every experiment in experiments/ in numeric order (or the test suite with --test).
# First use creates .venv from requirements.txt; later runs reuse it (nothing reinstalled).
set -uo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

usage() {
  cat <<USAGE
usage: bash run_all.sh [--only 04,07] [--smoke] [--device auto|cpu|cuda] [--results-dir DIR] [--seeds N]
                      [--jobs N]
       bash run_all.sh --test [--only 04,07] [-- PYTEST ARGS...]
       bash run_all.sh --bench-ab [REF] | --bench-bless "REASON" | --bench[-update] [N]
       bash run_all.sh --gpu-check [--machine NAME] [--only 04,06] [--skip-benchmarks]

  (no option)       run every experiment on the real data in \$DATA_DIR (default ./data);
                    datasets that are missing are replaced by labelled SYNTHETIC stand-ins
  --only LIST       comma-separated experiment numbers, e.g. 04,07 (each runs once, in numeric order)
  --smoke           each experiment's tiny configuration (seconds each)
  --device D        auto (default), cpu or cuda
  --results-dir D   where result JSONs and plots go (default ./results)
  --seeds N         number of seeds for every experiment (default: each script's own)
  --jobs N          experiments run at once (default: one per usable CPU core with --smoke, else 1:
                    the full scripts already use every core, and their timings are measured alone)
  --get-data        download the missing datasets into \$DATA_DIR (pinned sources, sha256-checked;
                    DATA_MIRROR=URL for a mirror), print the data table, exit (2 if a download failed)

  --test            run the whole pytest suite (what CI runs; quick throughput benchmarks recorded as
                    information in .benchmarks/ci.json), then the A/B timing gate against the blessed
                    commit (python -m tools.bench_ab). With --only, the tests of those experiments
                    alone and no gate; pytest's own arguments go after --, e.g. --test -- -k water -x
  --bench-ab [REF]  the A/B timing gate alone: this tree against REF (default: the blessed commit in
                    tests/benchmarks/blessed.json), interleaved in one run; exit 1 names the slower ones
  --bench-bless R   record HEAD as the A/B gate's base after a deliberate change of speed, with the
                    one-line reason R (then commit tests/benchmarks/blessed.json)
  --bench [N]       run the throughput benchmarks N times (default 5) and print each model's noise
                    (reference-normalised figures, for comparing machines; not a pass/fail)
  --bench-update [N]  the same, then write tests/benchmarks/baseline.json from those runs
  --gpu-check       on a GPU machine (<= 8 min): CUDA usable?, the CUDA benchmarks, a --smoke --device cuda
                    run of every experiment, a same-seed rerun check; writes results/gpu-check/<machine>.json
                    (python -m tools.gpu_check; exit 2 at once, with the reason, where CUDA is unusable)
USAGE
}

TEST=0; BENCH=0; BENCH_UPDATE=0; BENCH_AB=0; AB_REF=""; BLESS=""; ONLY=""; SMOKE=0; DEVICE=auto
RESULTS_DIR="$ROOT/results"; SEEDS=""; JOBS=""; PYTEST_ARGS=(); FALLBACK=()
GET_DATA=0
while [ $# -gt 0 ]; do
  case "$1" in
    --get-data) GET_DATA=1; shift ;;
    --gpu-check) GPU_CHECK=1; shift; GPU_CHECK_ARGS=("$@"); break ;;   # the rest goes to tools.gpu_check
    --test) TEST=1; shift ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    --bench|--bench-update) [ "$1" = --bench-update ] && BENCH_UPDATE=1
                  if [[ "${2:-}" =~ ^[1-9][0-9]*$ ]]; then BENCH=$2; shift 2; else BENCH=5; shift; fi ;;
    --bench-ab) BENCH_AB=1
                if [ -n "${2:-}" ] && [[ "$2" != -* ]]; then AB_REF=$2; shift 2; else shift; fi ;;
    --bench-bless) BLESS="${2:-}"
                   if [ -z "$BLESS" ] || [[ "$BLESS" == -* ]]; then
                     echo "run_all.sh: --bench-bless needs a one-line reason, e.g. --bench-bless '05: the ReLU nets in one stack, 1.8x faster'" >&2; exit 2
                   fi
                   shift 2 ;;
    --only) ONLY="${2:?--only needs a list like 04,07}"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --device) DEVICE="${2:?--device needs auto, cpu or cuda}"; shift 2 ;;
    --results-dir) RESULTS_DIR="${2:?--results-dir needs a folder}"; shift 2 ;;
    --seeds) SEEDS="${2:?--seeds needs a number}"; shift 2 ;;
    --jobs) JOBS="${2:?--jobs needs a number}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
modes=$(( TEST + (BENCH > 0) + BENCH_AB + (${#BLESS} > 0) ))
[ "$modes" -le 1 ] || { echo "run_all.sh: --test, --bench, --bench-ab and --bench-bless are separate modes; give one" >&2; exit 2; }
[ ${#PYTEST_ARGS[@]} -eq 0 ] || [ "$TEST" = 1 ] || { echo "run_all.sh: arguments after -- go to pytest and need --test" >&2; exit 2; }
case "$DEVICE" in auto|cpu|cuda) ;; *) echo "run_all.sh: unknown device '$DEVICE' (auto, cpu or cuda)" >&2; exit 2 ;; esac
if [ -n "$SEEDS" ] && ! [[ "$SEEDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "run_all.sh: --seeds must be a positive integer, got '$SEEDS'" >&2; exit 2
fi
if [ -n "$JOBS" ] && ! [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
  echo "run_all.sh: --jobs must be a positive integer, got '$JOBS'" >&2; exit 2
fi
if [ -z "$JOBS" ]; then
  if [ "$SMOKE" = 1 ]; then JOBS=$(nproc 2>/dev/null || echo 1); else JOBS=1; fi
fi

# ---- --gpu-check where no NVIDIA GPU is visible: say so at once (exit 2), before any slow venv set-up
if [ "${GPU_CHECK:-0}" = 1 ]; then "${PYTHON:-python3}" tools/gpu_check.py --precheck || exit $?; fi

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

# ---- --gpu-check: CUDA checks, CUDA benchmarks, a smoke run of every experiment on cuda (tools/gpu_check.py)
if [ "${GPU_CHECK:-0}" = 1 ]; then exec "$VPY" -m tools.gpu_check "${GPU_CHECK_ARGS[@]}"; fi

# ---- --get-data: fetch the missing datasets (common/download.py), show the data table, exit with its status
if [ "$GET_DATA" = 1 ]; then "$VPY" -m common.data --download; exit $?; fi

# ---- which experiments (each once, in numeric order)
mapfile -t SCRIPTS < <(ls experiments/[0-9][0-9]_*.py 2>/dev/null | sort)
if [ -n "$ONLY" ]; then
  SELECTED=()
  IFS=',' read -ra WANT <<< "$ONLY"
  for n in "${WANT[@]}"; do
    [[ "$n" =~ ^[0-9]{1,2}$ ]] || { echo "run_all.sh: bad experiment number in --only: '$n' (e.g. --only 04,07)" >&2; exit 2; }
    n=$(printf '%02d' "$((10#$n))")
    match=$(printf '%s\n' "${SCRIPTS[@]}" | grep "^experiments/${n}_" || true)
    [ -n "$match" ] || { echo "run_all.sh: no experiment numbered $n (have: $(printf '%s ' "${SCRIPTS[@]##*/}"))" >&2; exit 2; }
    SELECTED+=("$match")
  done
  mapfile -t SCRIPTS < <(printf '%s\n' "${SELECTED[@]}" | sort -u)
fi
[ ${#SCRIPTS[@]} -gt 0 ] || { echo "run_all.sh: no experiments found in experiments/" >&2; exit 1; }

if [ "$TEST" = 1 ]; then
  # pytest (the quick benchmarks' timings kept as information), then the A/B timing gate: the only
  # pass/fail on speed, this tree against the blessed commit, interleaved in one run on this machine
  BENCH_JSON="$ROOT/.benchmarks/ci.json"
  mkdir -p "$ROOT/.benchmarks"; rm -f "$BENCH_JSON"
  if [ -n "$ONLY" ]; then
    for s in "${SCRIPTS[@]}"; do
      t="tests/test_$(basename "$s")"; [ -f "$t" ] && PYTEST_ARGS=("$t" "${PYTEST_ARGS[@]}")
    done
  fi
  echo "== pytest ${PYTEST_ARGS[*]} (DATA_DIR=${DATA_DIR:-$ROOT/data}; benchmark timings -> $BENCH_JSON)"
  t0=$(date +%s)
  "$VPY" -m pytest --benchmark-json="$BENCH_JSON" "${PYTEST_ARGS[@]}"; test_rc=$?
  echo "== pytest took $(( $(date +%s) - t0 ))s"
  gate_rc=0
  if [ ${#PYTEST_ARGS[@]} -eq 0 ]; then
    echo "== A/B timing gate: python -m tools.bench_ab (this tree vs the blessed commit)"
    "$VPY" -m tools.bench_ab --json "$ROOT/.benchmarks/ab.json"; gate_rc=$?
  else
    echo "== A/B timing gate skipped (a chosen subset of the tests); run it with: bash run_all.sh --bench-ab"
  fi
  [ "$test_rc" = 0 ] || echo "run_all.sh: pytest failed (exit $test_rc)" >&2
  [ "$gate_rc" = 0 ] || echo "run_all.sh: the A/B timing gate failed (exit $gate_rc)" >&2
  [ "$test_rc" = 0 ] && [ "$gate_rc" = 0 ]; exit $?
fi

if [ "$BENCH_AB" = 1 ]; then
  mkdir -p "$ROOT/.benchmarks"
  "$VPY" -m tools.bench_ab ${AB_REF:+"$AB_REF"} --json "$ROOT/.benchmarks/ab.json"; exit $?
fi
if [ -n "$BLESS" ]; then
  "$VPY" -m tools.bench_ab --bless "$BLESS"; exit $?
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
  "$VPY" -m tools.gate noise "$RUNS_DIR"/run*.json || exit $?
  if [ "$BENCH_UPDATE" = 1 ]; then "$VPY" -m tools.gate update "$RUNS_DIR"/run*.json; exit $?; fi
  echo "baseline unchanged; to write it from these runs: $VPY -m tools.gate update $RUNS_DIR/run*.json"
  exit 0
fi

# ---- real data or loud synthetic fallback
DATA_REPORT=$(mktemp "${TMPDIR:-/tmp}/run_all_data.XXXXXX")
trap 'rm -f "$DATA_REPORT" "${FAILED_LIST:-}"' EXIT
trap 'exit 130' INT; trap 'exit 143' TERM   # Ctrl-C or kill: still through the EXIT trap, nothing left in /tmp
if ! "$VPY" -m common.data > "$DATA_REPORT" 2>&1; then
  echo "############################################################################"
  echo "# WARNING: some real datasets are missing; those experiments run on        #"
  echo "# SYNTHETIC stand-ins, and their results are marked source=synthetic.      #"
  echo "############################################################################"
  cat "$DATA_REPORT"
  echo "Get the data with:  bash run_all.sh --get-data   (the missing datasets, ~21 MB, pinned and checksummed,"
  echo "into DATA_DIR=${DATA_DIR:-$ROOT/data}), or set DATA_DIR to a folder that holds them (README.md, section Data)."
  FALLBACK=(--synthetic-if-missing)   # explicit on every script's command line (echoed below), no hidden switch
fi
rm -f "$DATA_REPORT"

ARGS=(--device "$DEVICE" --results-dir "$RESULTS_DIR" "${FALLBACK[@]}")
[ "$SMOKE" = 1 ] && ARGS+=(--smoke)
[ -n "$SEEDS" ] && ARGS+=(--seeds "$SEEDS")
mkdir -p "$RESULTS_DIR"
START=$(date +%s)
PREFIXES=()
for s in "${SCRIPTS[@]}"; do name=$(basename "$s"); PREFIXES+=("${name:0:2}"); done
# each script in its own process, forked after one shared import of torch/torchvision/torchmetrics
# (tools/run_experiments.py); a failing one does not stop the rest
FAILED_LIST=$(mktemp "${TMPDIR:-/tmp}/run_all_failed.XXXXXX")
PYTHONPATH="$ROOT" "$VPY" -m tools.run_experiments --jobs "$JOBS" --failed-file "$FAILED_LIST" \
  "${SCRIPTS[@]}" -- "${ARGS[@]}"
mapfile -t FAILED < "$FAILED_LIST"
rm -f "$FAILED_LIST"

echo
echo "== summary ($(( $(date +%s) - START ))s in all; results in $RESULTS_DIR)"
"$VPY" -m tools.summary "$RESULTS_DIR" --since "$START" --experiments "${PREFIXES[@]}" || true
if [ ${#FAILED[@]} -gt 0 ]; then
  echo
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
