"""``python -m tools.report RESULTS_DIR [--out results/REPORT.md] [--readme README.md]``: the Markdown report of a results folder.

With ``--readme``, also rewrites the README's results table (between ``README_BEGIN`` and ``README_END``)
from the same JSONs: no figure in it is typed by hand. Each row shows the figures named in ``TABLE``
(mean ± std over the seeds), the course's figure beside the model it belongs to, the baselines, one
plain sentence where a comparison decides something (``within noise`` when the difference of the
means is not larger than the larger of the two seed spreads), a link to the run's deviations from the
course in the report, and the wall time.

Per experiment: the headline figure (mean ± std over seeds) beside what the course reports, the
baselines present in the metrics (keys containing ``baseline``), the test metrics, the timings and
the plots (relative links to the PNGs under ``RESULTS_DIR/<experiment>/``); at the top the machine
and versions from the results' ``environment`` block, and a table of every course figure.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import re
import statistics
import sys
from pathlib import Path

from common.schema import compare_means

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
README_BEGIN = "<!-- results-table: generated from {} by python -m tools.report --readme; do not edit by hand -->"
README_END = "<!-- results-table: end -->"

# The README table: per result file, the figures (label, metric or tuple of metrics shown "a / b", what the
# course says of exactly that model or None), the baselines (label, metric) and the comparisons that get a sentence:
# (label A, metric A, label B, metric B, lower_is_better).
TABLE = {
    "01_tensors_and_layers": {"label": "01 tensors and layers",
        "figures": [("parameters of the 8→4→2 network", "params.course_net_numel", "46"),
                    ("sigmoid(6)", "activation.sigmoid_6", "0.9975")]},
    "02_loss_and_gradients": {"label": "02 loss and gradients",
        "figures": [("x after SGD lr 0.2 on x²", "lr.good.final_x", None),
                    ("x with momentum 0.9 (global min at 1.06)", "momentum.m09.final_x", "reaches the global minimum"),
                    ("x with momentum 0 (local min at −0.93)", "momentum.m0.final_x", "stuck in the local minimum")]},
    "03_tabular_training": {"label": "03 tabular (Zoo, salaries)",
        "figures": [("Zoo test accuracy", "zoo.test_accuracy", None),
                    ("salary validation RMSE (USD)", "salary.val_rmse_usd", None)],
        "baselines": [("majority", "baseline.majority_test_accuracy"),
                      ("mean salary", "baseline.salary_mean_val_rmse_usd")],
        "compare": [("Zoo MLP", "zoo.test_accuracy", "the majority class", "baseline.majority_test_accuracy", False)]},
    "04_clouds_cnn": {"label": "04 clouds CNN",
        "figures": [("course CNN test accuracy", "course.accuracy", None),
                    ("course CNN macro recall / macro precision", ("course.recall_macro", "course.precision_macro"),
                     "recall higher than precision"),
                    ("course CNN clear-sky recall", "course.recall.clear sky", "1.0"),
                    ("improved CNN test accuracy", "improved.accuracy", None)],
        "baselines": [("majority", "baseline.majority_accuracy")],
        "compare": [("the improved CNN", "improved.accuracy", "the course CNN", "course.accuracy", False),
                    ("the course CNN", "course.accuracy", "the majority class", "baseline.majority_accuracy", False)]},
    "05_water_potability_course": {"label": "05 water, course split",
        "figures": [("Adam (course network) test accuracy", "adam.test_accuracy", "over 67 %"),
                    ("SGD lr 0.01 (the transcript's loop)", "sgd.test_accuracy", None),
                    ("Kaiming init test accuracy", "grad.kaiming.test_accuracy", None)],
        "baselines": [("majority", "baseline.majority_accuracy"), ("random forest", "baseline.random_forest_accuracy")],
        "compare": [("Adam", "adam.test_accuracy", "the majority class", "baseline.majority_accuracy", False),
                    ("Adam", "adam.test_accuracy", "a random forest", "baseline.random_forest_accuracy", False)]},
    "05_water_potability_clean": {"label": "05 water, clean split",
        "figures": [("Adam test accuracy", "adam.test_accuracy", None),
                    ("Kaiming init test accuracy", "grad.kaiming.test_accuracy", None)],
        "baselines": [("majority", "baseline.majority_accuracy"), ("random forest", "baseline.random_forest_accuracy")],
        "compare": [("Adam", "adam.test_accuracy", "a random forest", "baseline.random_forest_accuracy", False)]},
    "06_electricity_rnn": {"label": "06 electricity RNN",
        "figures": [("RNN test MSE (z-scored units²)", "rnn.test_mse", None)],
        "baselines": [("persistence", "baseline.persistence_mse"), ("same time yesterday", "baseline.seasonal_naive_mse")],
        "compare": [("the RNN", "rnn.test_mse", "persistence (the last reading)", "baseline.persistence_mse", True)],
        "note": "MSE in squared z-units: the course's files hold readings z-scored over train and test together "
                "(a property of those files, not of this code), not kW"},
    "07_lstm_vs_gru": {"label": "07 LSTM vs GRU",
        "figures": [("LSTM test MSE", "lstm.test_mse", None),
                    ("GRU test MSE", "gru.test_mse", "similar to the LSTM, at lower cost")],
        "baselines": [("persistence", "baseline.persistence_mse")],
        "compare": [("the GRU", "gru.test_mse", "the LSTM", "lstm.test_mse", True),
                    ("the LSTM", "lstm.test_mse", "persistence (the last reading)", "baseline.persistence_mse", True),
                    ("the GRU", "gru.test_mse", "persistence", "baseline.persistence_mse", True)]},
    "08_omniglot_multi_input": {"label": "08 Omniglot two-input (clean split)",
        "figures": [("course model character accuracy", "clean.course_model.char_accuracy", None),
                    ("improved model character accuracy", "clean.improved.char_accuracy", None)],
        "baselines": [("alphabet prior", "baseline.clean.alphabet_prior_accuracy")],
        "compare": [("the improved model", "clean.improved.char_accuracy",
                     "the course model", "clean.course_model.char_accuracy", False)]},
    "09_omniglot_multi_output": {"label": "09 Omniglot two-output (clean split)",
        "figures": [("course model alphabet accuracy", "clean.course_model.alphabet_accuracy", None),
                    ("course model character accuracy", "clean.course_model.char_accuracy", None),
                    ("improved model character accuracy", "clean.improved.char_accuracy", None),
                    ("course model on the course's own split (test images shared with training): alphabet / "
                     "character accuracy", ("course.course_model.alphabet_accuracy", "course.course_model.char_accuracy"),
                     "31 % / 24 % (which split it used is a guess)")],
        "baselines": [("alphabet majority", "baseline.clean.alphabet_majority_accuracy"),
                      ("character majority", "baseline.clean.char_majority_accuracy")],
        "compare": [("the improved model", "clean.improved.char_accuracy",
                     "the course model", "clean.course_model.char_accuracy", False)]},
}


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


def load_ablations(results_dir: Path) -> list[tuple[Path, dict]]:
    """The ablation records under ``results_dir/ablation/`` (04's, 06's and 08's ``--ablation``): the choices made on
    validation data before the reference run."""
    out = []
    for path in sorted((results_dir / "ablation").glob("[0-9][0-9]_*.ablation.json")):
        kind, data = classify(path)
        if kind == "result":
            out.append((path, data))
    return out


def ablation_tables(ablations: list[tuple[Path, dict]], base: Path) -> list[str]:
    """Per ablation record: every candidate's settings, best validation figure (mean ± std over its seeds, or the
    mean over its folds), its runs' own best figures (lowest to highest: the spread a difference between candidates
    must beat), the runs that reached the target and the median training seconds to it; the chosen
    candidate in bold, the rule below. ``base``: the folder the record paths are shown relative to."""
    lines = []
    for path, r in ablations:
        sel, targets = r["selection"], r.get("targets") or {}
        chosen = sel["chosen"]["candidate"]
        what = next(k for k in sel["chosen"] if k != "candidate")
        runs = list(next(iter(targets.values()))["runs"]) if targets else [  # no goal: the record's folds
            f"fold {k + 1}" for k in range(sel["validation"].get("folds") or 0)]
        lines += [f"`{Path(os.path.relpath(path, base)).as_posix()}` ({r['experiment']}, {len(runs)} runs per "
                  f"candidate: {', '.join(runs)}; {sel['validation']['method']}):", "",
                  f"| candidate | {what} | best validation | each run's best | runs that reached the target "
                  "| median time to target | median epochs to target |", "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
        for name, settings in sel["candidates"].items():
            t, key = targets.get(name), f"{name}.best"
            shown = [f"**{x}**" for x in (name, ", ".join(map(str, settings)))] if name == chosen else \
                [name, ", ".join(map(str, settings))]
            median = None if t is None else t["median_time_to_target_s"]
            reached = "n/a" if t is None else f"{t['reached']} of {t['of']} (target {t['target']:.4g})"
            epochs = sorted(x["epochs_to_target"] for x in (t or {"runs": {}})["runs"].values()
                            if x.get("epochs_to_target") is not None)
            bests = sorted(x["best"] for x in (t or {"runs": {}})["runs"].values() if x.get("best") is not None)
            spread = "–" if not bests else " – ".join(dict.fromkeys(f"{b:.4g}" for b in (bests[0], bests[-1])))
            lines.append(f"| {shown[0]} | {shown[1]} | {_fmt(r['metrics'].get(key), (r.get('std') or {}).get(key))} "
                         f"| {spread} | {reached} | {'–' if median is None else f'{median:.0f} s'} "
                         f"| {f'{statistics.median(epochs):g}' if epochs else '–'} |")
        lines += ["", f"Chosen: **{chosen}**, by the rule declared before the run: {sel['criterion']}.", ""]
    return lines


def environment_lines(records: list[dict]) -> list[str]:
    envs = {}
    for r in records:
        e = r.get("environment") or {}
        key = (e.get("device_info", {}).get("name"), e.get("torch_threads"), e.get("torch"), e.get("git_commit"))
        envs.setdefault(key, (e, []))[1].append(r["experiment"])
    lines = []
    for (_, _, _, _), (e, exps) in envs.items():
        di = e.get("device_info") or {}
        lines += [f"- **device**: {di.get('name', e.get('device'))} ({e.get('device')}), CPU {di.get('cpu_model')}"
                  + (f" ({di['cpu_capability']}, family {di.get('cpu_family')} model {di.get('cpu_model_number')})"
                     if di.get("cpu_capability") else "")
                  + f", {e.get('torch_threads')} torch threads"
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


def _mean_sd(r: dict, key: str) -> str:
    """``mean ± std`` with the std to two significant digits and the mean to the same place (at least three
    decimals below 1; large figures rounded to the std's tens, hundreds, ...); a figure without spread (one
    seed, exact, or a std that is only float round-off) to four significant digits."""
    v, sd = r["metrics"].get(key), r["std"].get(key)
    if v is None or isinstance(v, bool):
        return "n/a" if v is None else str(v)
    if not sd or sd <= 1e-9 * max(1.0, abs(v)):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    place = 1 - math.floor(math.log10(sd))                  # the std's second significant digit
    decimals = max(3 if abs(v) < 1 else 0, place)
    if decimals <= 0:
        return f"{round(v, place):,.0f} ± {round(sd, place):,.0f}"
    return f"{v:,.{decimals}f} ± {sd:,.{decimals}f}"


def comparison_sentence(r: dict, a_label: str, a: str, b_label: str, b: str, lower_is_better: bool) -> str | None:
    """One plain sentence: A beats B, does not, or the two are within noise (the seeds' spread)."""
    m, sd = r["metrics"], r["std"]
    if m.get(a) is None or m.get(b) is None:
        return None
    finding = compare_means(m[a], sd.get(a), m[b], sd.get(b), len(r["seeds"]))
    if finding == "within noise":
        return f"{a_label} and {b_label}: within noise"
    better = finding.startswith("lower" if lower_is_better else "higher")
    caveat = finding.split(" ", 1)[1] if " " in finding else ""
    return f"{a_label} {'beats' if better else 'does not beat'} {b_label}" + (f" {caveat}" if caveat else "")


def readme_table(records: list[dict], report_link: str, ablations: list[tuple[Path, dict]] = (),
                 paths_from: Path = Path(".")) -> str:
    """The README's results table (Markdown) from the result records; rows follow ``TABLE``; then the time-to-target
    table and the ablations' tables (record paths relative to ``paths_from``)."""
    by_name = {r["experiment"]: r for r in records}
    lines = ["| experiment | figure (mean ± std over seeds) | the course says | baselines | in plain words "
             "| deviations from the course | wall time |", "| --- | --- | --- | --- | --- | --- | ---: |"]
    for name, spec in TABLE.items():
        r = by_name.get(name)
        if r is None:
            continue
        figs = "<br>".join(f"{label}: {' / '.join(_mean_sd(r, k) for k in ((key,) if isinstance(key, str) else key))}"
                           for label, key, _ in spec["figures"])
        course = "<br>".join(f"{label}: {said}" for label, _, said in spec["figures"] if said)
        base = ", ".join(f"{label} {_mean_sd(r, key)}" for label, key in spec.get("baselines", []))
        words = "; ".join(filter(None, [*(comparison_sentence(r, *c) for c in spec.get("compare", [])),
                                        spec.get("note")]))
        n_dev = len(r["deviations"]) if isinstance(r.get("deviations"), list) else None
        dev = "not recorded" if n_dev is None else f"[{n_dev}]({report_link}#deviations-{name.replace('_', '-')})"
        wall = (r.get("timings") or {}).get("wall_s")
        seeds = len(r["seeds"])
        lines.append(f"| {spec['label']} ({seeds} seed{'s' if seeds != 1 else ''}) | {figs} | {course} | {base} | "
                     f"{words} | {dev} | {'n/a' if wall is None else f'{wall:.0f} s'} |")
    span = run_span_s(records)
    if span is not None:
        lines += ["", f"The whole run, from the first script's start to the last one's end: {span / 60:.0f} min "
                      f"({span:,.0f} s; runs within a script may overlap on the CPU cores: each result's timings.workers)."]
    targets = targets_table(records)
    if targets:
        lines += ["", "Time to target (airbench style): the training seconds until a model's validation figure first "
                      "reached its goal, per run, on the machine of this run (the JSONs' `targets`).", "", *targets]
    if ablations:
        lines += ["", "The ablations behind the improved models' settings and the recurrent models' batch and lr, on "
                      "validation data only (no model reads a test image or window), run before the reference run:",
                  "", *ablation_tables(ablations, paths_from)]
        lines.pop()   # the block ends with its table's last sentence
    return "\n".join(lines) + "\n"


def targets_table(records: list[dict]) -> list[str]:
    """The goals set for the models (the results' ``targets``): per model its validation target, in how many runs it
    was reached (within the time budget), the median training seconds to reach it, the best figure reached and
    the training seconds of a run. Empty when no result sets a target."""
    rows = []
    for r in records:
        for model, t in (r.get("targets") or {}).items():
            runs = list(t["runs"].values())
            op = ">=" if t["higher_is_better"] else "<="
            budget = "no budget" if t["budget_s"] is None else f"{t['within_budget']} within {t['budget_s']:.0f} s"
            median = t.get("median_time_to_target_s")
            train_s = sorted(x["train_s"] for x in runs)
            rows.append(f"| {r['experiment']} {model} | {t['metric']} {op} {t['target']:.4g} | "
                        f"{t['reached']} of {len(runs)} ({budget}) | {'not reached' if median is None else f'{median:.0f} s'} | "
                        f"{t['best']:.4g} | {train_s[len(train_s) // 2]:.0f} s |")
    if not rows:
        return []
    return ["| model | target (validation) | runs that reached it | median time to target | best reached "
            "| training s per run (median) |", "| --- | --- | --- | ---: | ---: | ---: |", *rows]


def run_span_s(records: list[dict]) -> float | None:
    """Seconds from the earliest ``started_at`` to the latest ``started_at + wall_s`` of the records: a run of
    the suite by its scripts' own clocks (the first script's interpreter start-up and run_all's checks before it
    are not in it; ``started_at`` has whole seconds)."""
    spans = []
    for r in records:
        wall = (r.get("timings") or {}).get("wall_s")
        try:
            spans.append((_dt.datetime.fromisoformat(r["started_at"]).timestamp(), float(wall)))
        except (KeyError, TypeError, ValueError):   # no start time or wall time: not part of the span
            continue
    if not spans:
        return None
    return max(t + w for t, w in spans) - min(t for t, _ in spans)


README_MARKERS = re.compile(r"<!-- results-table: generated from (.+?) by [^\n]*-->\n(.*?)" + re.escape(README_END), re.S)


def readme_block(text: str) -> tuple[str, str] | None:
    """``(results folder, table)`` of the README's generated block, or None if it has none."""
    found = README_MARKERS.findall(text)
    return found[0] if len(found) == 1 else None


def rewrite_readme(readme: Path, table: str, source: str) -> None:
    """Replace the README's generated block with ``table`` made from ``source``; CompareError without one block."""
    text = readme.read_text()
    if readme_block(text) is None:
        raise CompareError(f"{readme}: needs exactly one block {README_BEGIN.format('DIR')!r} ... {README_END!r}")
    block = README_BEGIN.format(source) + "\n" + table + README_END
    readme.write_text(README_MARKERS.sub(lambda _: block, text))


def deviations_section(r: dict) -> list[str]:
    """The run's departures from the course transcript, each with its reason (anchor ``deviations-<name>``)."""
    name = r["experiment"]
    lines = [f'<a id="deviations-{name.replace("_", "-")}"></a>', "", f"### Deviations from the course: {name}", ""]
    devs = r.get("deviations")
    if not isinstance(devs, list):
        lines.append("Not recorded (this result predates the `deviations` field).")
    elif not devs:
        lines.append("None: the script follows the transcript.")
    else:
        lines += ["| what | the course | here | why | course setting |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {d['what']} | {d['course']} | {d['here']} | {d['why']} | "
                  f"{('`' + d['flag'] + '`') if d.get('flag') else ''} |" for d in devs]
    sel = r.get("selection")
    if sel:
        chosen = ", ".join(f"{k} = {v}" for k, v in sel["chosen"].items()) if isinstance(sel.get("chosen"), dict) \
            else sel.get("chosen")
        lines += ["", f"**Chosen on validation data**: {chosen}; criterion: {sel.get('criterion')}; "
                      f"final model: {sel.get('final_model')}. (The JSON's `selection` has the split, the "
                      f"candidates and their scores.)"]
    return lines + [""]


def build_report(results_dir: Path, out: Path, loaded: list[tuple[Path, dict]],
                 ablations: list[tuple[Path, dict]] = ()) -> str:
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
    targets = targets_table(records)
    if targets:
        lines += ["", "## Time to target", "", "Training seconds until each model's validation figure first reached "
                  "its goal (the JSONs' `targets`; `note` there says how each was measured).", "", *targets]
    if ablations:
        scripts = [r["experiment"].split("_")[0] for _, r in ablations]
        lines += ["", "## Ablations", "", "The choices of the improved models' settings and the recurrent models' batch "
                  f"and lr, made on validation data only (`--ablation` of {', '.join(scripts)}):", "",
                  *ablation_tables(ablations, out.parent)]
    lines += ["", "## What the course reports", "", "| topic | figure | value | where |", "| --- | --- | --- | --- |"]
    lines += [f"| {e['topic']} | {w} | {v} | transcript {where} |" for e in COURSE_FIGURES for w, v, where in e["figures"]]
    lines.append("")
    for path, r in loaded:
        lines += experiment_section(path, r, out.parent)
        lines += deviations_section(r)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results/REPORT.md"))
    ap.add_argument("--readme", type=Path, default=None,
                    help="also rewrite this README's results table (between its markers) from the same results")
    a = ap.parse_args(argv)
    try:
        if not a.results_dir.is_dir():
            raise CompareError(f"{a.results_dir}: not a directory")
        loaded, ablations = load_results(a.results_dir), load_ablations(a.results_dir)
        text = build_report(a.results_dir, a.out.resolve(), loaded, ablations)
        if a.readme:
            records = [r for _, r in loaded]
            link = Path(os.path.relpath(a.out.resolve(), a.readme.resolve().parent)).as_posix()
            source = Path(os.path.relpath(a.results_dir.resolve(), a.readme.resolve().parent)).as_posix()
            rewrite_readme(a.readme, readme_table(records, link, ablations, a.readme.resolve().parent), source)
    except CompareError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(f"wrote {a.out}" + (f" and the results table of {a.readme}" if a.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
