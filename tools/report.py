"""``python -m tools.report RESULTS_DIR [--out results/REPORT.md]``: the Markdown report of a results folder.

Per experiment: the headline figure (mean ± std over seeds) beside what the course reports, the
baselines present in the metrics (keys containing ``baseline``), the test metrics, the timings and
the plots (relative links to the PNGs under ``RESULTS_DIR/<experiment>/``); at the top the machine
and versions from the results' ``environment`` block, and a table of every course figure.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path

from .compare import CompareError, classify

# What the course reports (transcript line numbers in /work/shared/course/transcript.txt). Each entry applies
# to the experiments whose name contains one of its keywords; all of them are also listed in one table.
COURSE_FIGURES = [
    {"topic": "first network (intro)", "match": ("01_", "intro", "basics", "tensor", "animal", "zoo", "mlp"),
     "figures": [("learnable parameters of the example network (8 inputs, linear 8-4, linear 4-2)", "46", "l.72-77"),
                 ("sigmoid(6)", "0.9975", "l.89")]},
    {"topic": "water potability", "match": ("water",),
     "figures": [("test accuracy of the course's network (Adam)", "> 67%", "l.460")]},
    {"topic": "clouds CNN", "match": ("cloud",),
     "figures": [("macro recall vs macro precision on the test set", "recall higher than precision", "l.624-625"),
                 ("per-class recall: clear sky", "1.0", "l.631-633"),
                 ("per-class recall: cumulus/high cumuliform clouds", "harder (lower)", "l.633")]},
    {"topic": "electricity RNN/LSTM/GRU", "match": ("electric", "rnn", "lstm", "gru"),
     "figures": [("LSTM vs GRU test MSE", "similar; GRU slightly lower", "l.762-766")]},
    {"topic": "Omniglot multi-input / multi-output", "match": ("omniglot",),
     "figures": [("multi-output test accuracy: alphabet", "31%", "l.835"),
                 ("multi-output test accuracy: character", "24%", "l.835")]},
]


MAX_REPORT_METRICS = 40


def course_figures_for(experiment: str) -> list[tuple[str, str, str]]:
    name = experiment.lower()
    return [f for e in COURSE_FIGURES if any(k in name for k in e["match"]) for f in e["figures"]]


def _fmt(v, sd=None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    s = f"{v:.4g}"
    return s + (f" ± {sd:.2g}" if sd else "")


def load_results(results_dir: Path) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(results_dir.glob("[0-9][0-9]_*.json")):
        kind, data = classify(path)
        if kind == "result":
            out.append((path, data))
    return out


def environment_lines(records: list[dict]) -> list[str]:
    envs = {}
    for r in records:
        e = r.get("environment") or {}
        key = (e.get("device_info", {}).get("name"), e.get("torch_threads"), e.get("torch"), e.get("git_commit"))
        envs.setdefault(key, (e, []))[1].append(r["experiment"])
    lines = []
    for (_, _, _, _), (e, exps) in envs.items():
        di = e.get("device_info") or {}
        lines += [f"- **device**: {di.get('name', e.get('device'))} ({e.get('device')}), CPU {di.get('cpu_model')}, "
                  f"{e.get('torch_threads')} torch threads"
                  + (f", CUDA {e.get('cuda')}, cuDNN {e.get('cudnn')}" if e.get("cuda") else ""),
                  f"- **versions**: Python {e.get('python')}, torch {e.get('torch')}, torchvision {e.get('torchvision')}, "
                  f"torchmetrics {e.get('torchmetrics')}, numpy {e.get('numpy')}; float32 matmul precision "
                  f"{e.get('float32_matmul_precision')}",
                  f"- **platform**: {e.get('platform')}; git {str(e.get('git_commit'))[:12]}"
                  + (" (dirty)" if e.get("git_dirty") else "")]
        if len(envs) > 1:
            lines.append(f"- (for: {', '.join(exps)})")
    return lines


def experiment_section(path: Path, r: dict, out_dir: Path) -> list[str]:
    exp, m, sd = r["experiment"], r["metrics"], r["std"]
    h = r["headline"]
    lines = [f"## {exp}", "",
             f"status **{r['status']}**, data **{'no dataset' if r['data'].get('name') == 'none' else r['data'].get('source', '?')}** "
             f"(fingerprint `{str(r['data'].get('fingerprint', ''))[:12]}`), seeds {r['seeds']}", "",
             f"**headline**: `{h}` = {_fmt(m.get(h), sd.get(h))}", ""]
    course = course_figures_for(exp)
    if course:
        lines += ["| the course reports | value | where |", "| --- | --- | --- |"]
        lines += [f"| {what} | {val} | transcript {where} |" for what, val, where in course]
        lines.append("")
    base = [k for k in m if "baseline" in k.lower()]
    # the headline, then test figures, then the rest (capped: the JSON has them all), baselines last
    rest = [k for k in m if k != h and "baseline" not in k.lower()]
    ordered = [h] + [k for k in rest if "test" in k.lower()] + [k for k in rest if "test" not in k.lower()]
    shown = ordered[:MAX_REPORT_METRICS]
    lines += ["| metric | value (mean ± std over seeds) |", "| --- | ---: |"]
    lines += [f"| {k}{' (headline)' if k == h else ''} | {_fmt(m.get(k), sd.get(k))} |" for k in shown]
    lines += [f"| {k} (baseline) | {_fmt(m.get(k), sd.get(k))} |" for k in base]
    if len(ordered) > len(shown):
        lines.append(f"| ... {len(ordered) - len(shown)} more metrics in `{path.name}` | |")
    t = r.get("timings") or {}
    lines += ["", "timings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in t.items() if v is not None), ""]
    plot_dir = path.parent / exp
    for png in sorted(plot_dir.glob("*.png")) if plot_dir.is_dir() else []:
        rel = Path(os.path.relpath(png, out_dir)).as_posix()
        lines += [f"![{exp}: {png.stem}]({rel})", ""]
    return lines


def build_report(results_dir: Path, out: Path) -> str:
    loaded = load_results(results_dir)
    if not loaded:
        raise CompareError(f"{results_dir}: no result JSONs (NN_*.json, schema_version 1) here")
    records = [r for _, r in loaded]
    lines = ["# Results report", "",
             f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by "
             f"`python -m tools.report {results_dir}` from {len(records)} result files.", "",
             "## Machine and versions", "", *environment_lines(records), "",
             "## Summary", "", "| experiment | status | headline | value | wall time (s) | data |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for r in records:
        h = r["headline"]
        lines.append(f"| {r['experiment']} | {r['status']} | {h} | {_fmt(r['metrics'].get(h), r['std'].get(h))} | "
                     f"{_fmt((r.get('timings') or {}).get('wall_s'))} | "
                     f"{'no dataset' if r['data'].get('name') == 'none' else r['data'].get('source', '?')} |")
    synthetic = [r["experiment"] for r in records if r["data"].get("source") == "synthetic"]
    if synthetic:
        lines += ["", f"**NOTE: {', '.join(synthetic)} ran on SYNTHETIC stand-in data; their figures say nothing "
                      f"about the course's models.**"]
    lines += ["", "## What the course reports", "", "| topic | figure | value | where |", "| --- | --- | --- | --- |"]
    lines += [f"| {e['topic']} | {w} | {v} | transcript {where} |" for e in COURSE_FIGURES for w, v, where in e["figures"]]
    lines.append("")
    for path, r in loaded:
        lines += experiment_section(path, r, out.parent)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results/REPORT.md"))
    a = ap.parse_args(argv)
    try:
        if not a.results_dir.is_dir():
            raise CompareError(f"{a.results_dir}: not a directory")
        text = build_report(a.results_dir, a.out.resolve())
    except CompareError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
