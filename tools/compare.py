"""``python -m tools.compare A B [C ...]``: the suite's results side by side, across machines or settings.

Each argument is a results directory (its ``*.json`` files) or one JSON file: a suite result
(``schema_version`` 1, written by ``common.results``) or a pytest-benchmark JSON (``--benchmark-json``).
The first argument is the reference: every other column also gets its ratio to it.

* one table per experiment: the headline metric (and the test metrics; all with ``--all-metrics``),
  mean ± std over seeds, wall time and training throughput; a metric that differs from the first
  argument's by more than the seeds' spread (the larger of the two ``std``) is flagged;
* one table of benchmarks (samples/s of every forward / train-step benchmark, and the figure
  normalised by the same run's reference kernel);
* columns name the device (``environment.device_info.name``), torch's thread count and, where a script spread
  its runs over worker processes, their number (its throughput figures are then per run, i.e. per worker);
* ``--plot PATH``: a PNG of the relative throughput of every model (benchmarks' train steps and the
  experiments' training throughput) across the compared arguments.

Apples and oranges are refused (exit 2, one line per difference): a different data fingerprint or
data source (synthetic vs real), a different config (ignoring results_dir, data_dir, device, rerun and
other path-like keys), a different schema version, or benchmarks of different batch or FLOPs. ``--force``
shows the tables anyway, with every difference marked MISMATCH. A file that is not JSON, or a JSON of
another kind, is refused with a message naming it (exit 2).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.schema import SCHEMA_VERSION, check_result, load_json

IGNORED_CONFIG = {"results_dir", "data_dir", "device", "threads", "workers", "rerun", "experiment",  # machine settings,
                  "synthetic_if_missing"}   # not the experiment (the data's source is compared on its own)
PATHLIKE_SUFFIXES = ("_dir", "_path", "_file", "_root", "_out", "_json", "_cache")
TIMING_ROWS = ("wall_s", "train_s", "train_samples_per_s")
MAX_METRICS = 16
ROUNDOFF = 1e-6      # relative differences below this are float round-off, never flagged


class CompareError(Exception):
    """Unusable or mismatched input: printed as one message, exit 2."""


@dataclass
class Source:
    arg: str
    label: str = ""
    results: dict = field(default_factory=dict)      # experiment -> result record
    benches: dict = field(default_factory=dict)      # benchmark name -> pytest-benchmark entry
    bench_files: list = field(default_factory=list)
    files: dict = field(default_factory=dict)        # experiment -> path

    def device(self, experiment: str | None = None) -> str:
        recs = [self.results[experiment]] if experiment in self.results else list(self.results.values())
        for r in recs:
            env = r.get("environment") or {}
            name = (env.get("device_info") or {}).get("name") or env.get("device") or "?"
            workers = (r.get("timings") or {}).get("workers")   # runs spread over worker processes (per run: thr)
            spread = f" x {workers} workers" if isinstance(workers, int) and workers > 1 else ""
            return f"{name}, {env.get('torch_threads', '?')} thr{spread}"
        for b in self.benches.values():
            info = b.get("extra_info") or {}
            if info.get("device_name"):
                return f"{info['device_name']}, {info.get('threads', '?')} thr"
        return "?"


# ------------------------------------------------------------------------------------ reading
def classify(path: Path) -> tuple[str, dict]:
    """``("result"|"bench"|"other", data)``; raise CompareError for a non-JSON or wrong-schema file."""
    try:
        data = load_json(path)
    except ValueError as e:
        raise CompareError(str(e)) from None
    if not isinstance(data, dict):
        return "other", {}
    if "benchmarks" in data and "machine_info" in data:
        return "bench", data
    if "schema_version" in data:
        if data["schema_version"] != SCHEMA_VERSION:
            raise CompareError(f"{path}: result schema_version {data['schema_version']!r}; this tool reads "
                               f"schema_version {SCHEMA_VERSION} only (refusing to compare different schemas)")
        try:
            return "result", check_result(data, str(path))
        except ValueError as e:
            raise CompareError(str(e)) from None
    return "other", data


def load_source(arg: str) -> Source:
    p = Path(arg)
    src = Source(arg=arg, label=p.name if p.is_dir() else p.stem)
    if p.is_dir():
        files = sorted(p.glob("*.json"))
        for f in files:
            kind, data = classify(f)
            if kind == "other":
                print(f"compare: note: skipping {f}: neither a suite result nor a pytest-benchmark JSON", file=sys.stderr)
            _add(src, f, kind, data)
        if not src.results and not src.benches:
            raise CompareError(f"{p}: no suite result JSONs (schema_version {SCHEMA_VERSION}) or pytest-benchmark "
                               f"JSONs in this directory")
    elif p.is_file():
        kind, data = classify(p)
        if kind == "other":
            raise CompareError(f"{p}: a JSON, but neither a suite result (schema_version {SCHEMA_VERSION}) nor a "
                               f"pytest-benchmark JSON (keys 'benchmarks' and 'machine_info')")
        _add(src, p, kind, data)
    else:
        raise CompareError(f"{p}: no such file or directory")
    return src


def _add(src: Source, path: Path, kind: str, data: dict) -> None:
    if kind == "result":
        exp = data["experiment"]
        if exp in src.results:
            raise CompareError(f"{path}: {src.arg} holds two results of {exp} ({src.files[exp]} and {path})")
        src.results[exp], src.files[exp] = data, path
    elif kind == "bench":
        src.bench_files.append(path)
        for b in data["benchmarks"]:
            src.benches[b["name"]] = b


def _label_sources(sources: list[Source]) -> None:
    labels = [s.label for s in sources]
    for i, s in enumerate(sources):
        if labels.count(s.label) > 1 or not s.label:
            s.label = f"{chr(ord('A') + i)}:{s.label or s.arg}"


# ------------------------------------------------------------------------------------ mismatches
def _data_keys(data, prefix="data") -> dict:
    """Every ``source`` and ``fingerprint`` in a result's data block (also under ``parts``), by path."""
    out = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if k in ("source", "fingerprint") and not isinstance(v, (dict, list)):
                out[f"{prefix}.{k}"] = v
            elif isinstance(v, dict):
                out.update(_data_keys(v, f"{prefix}.{k}"))
    return out


def _pathlike(key: str, value) -> bool:
    if key in IGNORED_CONFIG or key.endswith(PATHLIKE_SUFFIXES):
        return True
    return isinstance(value, str) and (value.startswith(("/", "~", "./", "../")) or "\\" in value)


def comparable_config(config: dict) -> dict:
    return {k: v for k, v in (config or {}).items() if not _pathlike(k, v)}


def mismatches(sources: list[Source]) -> list[str]:
    """Every apples-and-oranges difference between the first argument and the others."""
    out, first = [], sources[0]
    for s in sources[1:]:
        for exp in sorted(set(first.results) & set(s.results)):
            a, b = first.results[exp], s.results[exp]
            where = f"{exp}: {s.label} vs {first.label}"
            if a["schema_version"] != b["schema_version"]:
                out.append(f"{where}: schema_version {b['schema_version']} vs {a['schema_version']}")
            da, db = _data_keys(a["data"]), _data_keys(b["data"])
            for k in sorted(set(da) | set(db)):
                if da.get(k) != db.get(k):
                    what = "data source (synthetic vs real)" if k.endswith("source") else "data fingerprint"
                    out.append(f"{where}: different {what}: {k} = {db.get(k)!r} vs {da.get(k)!r}")
            ca, cb = comparable_config(a["config"]), comparable_config(b["config"])
            diff = [k for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
            if diff:
                out.append(f"{where}: different config: " +
                           ", ".join(f"{k}={cb.get(k, '<absent>')!r} vs {ca.get(k, '<absent>')!r}" for k in diff))
        for name in sorted(set(first.benches) & set(s.benches)):
            ia, ib = first.benches[name].get("extra_info") or {}, s.benches[name].get("extra_info") or {}
            for k in ("batch_size", "flops_per_batch"):
                if k in ia and k in ib and ia[k] != ib[k]:
                    out.append(f"benchmark {name}: {s.label} vs {first.label}: different {k}: {ib[k]} vs {ia[k]}")
    return out


# ------------------------------------------------------------------------------------ tables
def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def _metric_names(recs: list[dict], all_metrics: bool) -> list[str]:
    headline = recs[0]["headline"]
    names = list(dict.fromkeys(k for r in recs for k in r["metrics"]))
    if not all_metrics:
        names = ([k for k in names if "baseline" in k.lower()] +
                 [k for k in names if "test" in k.lower() and "baseline" not in k.lower()])[:MAX_METRICS]
    return [headline] + [k for k in names if k != headline]


def experiment_rows(exp: str, sources: list[Source], all_metrics: bool, marked: list[str]) -> list[dict]:
    """Rows of one experiment: ``{quantity, values[], stds[], ratios[], flag}``."""
    recs = [s.results.get(exp) for s in sources]
    present = [r for r in recs if r is not None]
    rows = []
    for m in _metric_names(present, all_metrics):
        vals = [_num(r["metrics"].get(m)) if r else None for r in recs]
        stds = [_num(r["std"].get(m)) if r else None for r in recs]
        nseeds = [len(r["per_seed"].get(m, [])) if r else 0 for r in recs]
        flags = []
        for i in range(1, len(recs)):
            if vals[0] is None or vals[i] is None:
                continue
            spread = max(stds[0] or 0.0, stds[i] or 0.0)
            diff = vals[i] - vals[0]
            # float round-off (summation order across thread counts) is not a difference
            if abs(diff) > max(spread, ROUNDOFF * max(abs(vals[0]), abs(vals[i]))):
                if spread == 0.0 and max(nseeds[0], nseeds[i]) <= 1:
                    flags.append(f"{sources[i].label}: differs {diff:+.3g} (1 seed, no spread)")
                else:
                    flags.append(f"{sources[i].label}: differs {diff:+.3g} > seed spread {spread:.3g}")
        label = m + (" (headline)" if m == present[0]["headline"] else "")
        rows.append({"quantity": label, "values": vals, "stds": stds, "flag": "; ".join(flags)})
    for t in TIMING_ROWS:
        vals = [_num((r["timings"] or {}).get(t)) if r else None for r in recs]
        if any(v is not None for v in vals):
            rows.append({"quantity": t, "values": vals, "stds": [None] * len(recs), "flag": ""})
    status = [r["status"] if r else "absent" for r in recs]
    if any(st != "ok" for st in status):
        rows.append({"quantity": "status", "values": status, "stds": [None] * len(recs),
                     "flag": "not every run is ok", "text": True})
    for row in rows:
        row["ratios"] = [_ratio(row["values"][i], row["values"][0]) if not row.get("text") else None
                         for i in range(1, len(recs))]
    if marked:
        rows.insert(0, {"quantity": "MISMATCH", "values": [""] * len(recs), "stds": [None] * len(recs),
                        "ratios": [None] * (len(recs) - 1), "flag": " | ".join(marked), "text": True})
    return rows


def _ratio(a, b):
    return a / b if isinstance(a, float) and isinstance(b, float) and b else None


def bench_rows(sources: list[Source]) -> list[dict]:
    names = list(dict.fromkeys(n for s in sources for n in s.benches))
    refs = [{_bdev(b): float(b["stats"]["median"]) for b in s.benches.values()
             if (b.get("extra_info") or {}).get("kind") == "reference" or b["name"].startswith("test_reference")}
            for s in sources]
    rows = []
    for name in sorted(names, key=lambda n: (not n.startswith("test_reference"), n)):
        vals, norms = [], []
        for s, ref in zip(sources, refs):
            b = s.benches.get(name)
            if b is None:
                vals.append(None), norms.append(None)
                continue
            info, median = b.get("extra_info") or {}, float(b["stats"]["median"])
            if name.startswith("test_reference") or info.get("kind") == "reference":
                vals.append(_num(info.get("gflops")) or (info.get("flops", 0) / median / 1e9))
            else:
                vals.append(_num(info.get("samples_per_s")) or (1.0 / median))
            norms.append(median / ref[_bdev(b)] if _bdev(b) in ref else None)
        unit = "GFLOP/s" if name.startswith("test_reference") else "samples/s"
        rows.append({"quantity": f"{name} {unit}", "values": vals, "stds": [None] * len(vals), "flag": "",
                     "norms": norms, "ratios": [_ratio(v, vals[0]) for v in vals[1:]]})
    return rows


def _bdev(b: dict) -> str:
    info = b.get("extra_info") or {}
    return info.get("device") or (b["name"].rsplit("-", 1)[-1].rstrip("]") if "[" in b["name"] else "cpu")


def build_tables(sources: list[Source], all_metrics: bool, marks: list[str]) -> list[tuple[str, list[str], list[dict]]]:
    """``[(title, column headers, rows)]``: one per experiment, then the benchmarks."""
    tables = []
    exps = sorted({e for s in sources for e in s.results})
    for exp in exps:
        heads = [f"{s.label} ({s.device(exp)})" for s in sources]
        marked = [m for m in marks if m.startswith(f"{exp}:")]
        missing = [s.label for s in sources if exp not in s.results]
        rows = experiment_rows(exp, sources, all_metrics, marked)
        title = exp + (f"  (absent from: {', '.join(missing)})" if missing else "")
        tables.append((title, heads, rows))
    if any(s.benches for s in sources):
        heads = [f"{s.label} ({s.device()})" for s in sources]
        marked = [m for m in marks if m.startswith("benchmark")]
        rows = bench_rows(sources)
        if marked:
            rows.insert(0, {"quantity": "MISMATCH", "values": [""] * len(sources), "stds": [None] * len(sources),
                            "ratios": [None] * (len(sources) - 1), "flag": " | ".join(marked), "text": True})
        tables.append(("benchmarks (pytest-benchmark; ratio = throughput relative to the first)", heads, rows))
    return tables


def _cell(v, sd=None) -> str:
    if isinstance(v, str):
        return v
    s = _fmt(v)
    return s + (f" ± {sd:.2g}" if sd else "")


def render(tables, sources: list[Source], fmt: str) -> str:
    ratio_heads = [f"{s.label}/{sources[0].label}" for s in sources[1:]]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["table", "quantity", *[s.label for s in sources], *[f"{s.label}_std" for s in sources],
                    *ratio_heads, *[f"{s.label}_device" for s in sources], "flag"])
        for title, heads, rows in tables:
            devices = [h[len(s.label) + 2:-1] for h, s in zip(heads, sources)]
            for r in rows:
                w.writerow([title.split("  ")[0], r["quantity"], *["" if v is None else v for v in r["values"]],
                            *["" if v is None else v for v in r["stds"]],
                            *["" if v is None else round(v, 6) for v in r["ratios"]], *devices, r["flag"]])
        return buf.getvalue()
    out = []
    for title, heads, rows in tables:
        cols = ["quantity", *heads, *ratio_heads, "flag"]
        body = [[r["quantity"], *[_cell(v, sd) for v, sd in zip(r["values"], r["stds"])],
                 *[f"{x:.3f}" if x is not None else "-" for x in r["ratios"]], r["flag"]] for r in rows]
        if fmt == "markdown":
            out.append(f"### {title}\n")
            out.append("| " + " | ".join(cols) + " |")
            out.append("| " + " | ".join("---" if i == 0 or c == "flag" else "---:" for i, c in enumerate(cols)) + " |")
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
            out.append("")
        else:
            widths = [max(len(c), *(len(row[i]) for row in body)) if body else len(c) for i, c in enumerate(cols)]
            out.append(f"== {title}")
            out.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
            out.append("  ".join("-" * w for w in widths))
            out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
            out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ plot
def throughput_ratios(sources: list[Source]) -> dict[str, list[float | None]]:
    """``{model label: [throughput of each source / the first's]}`` from benchmarks and result timings."""
    out = {}
    names = sorted({n for s in sources for n in s.benches if not n.startswith("test_reference")})
    for n in names:
        v = [(_num(((s.benches.get(n) or {}).get("extra_info") or {}).get("samples_per_s"))) for s in sources]
        if v[0]:
            out[n.replace("test_", "")] = [x / v[0] if x else None for x in v]
    for exp in sorted({e for s in sources for e in s.results}):
        v = [_num((s.results[exp]["timings"] or {}).get("train_samples_per_s")) if exp in s.results else None
             for s in sources]
        if v[0]:
            out[f"{exp} (training run)"] = [x / v[0] if x else None for x in v]
    return out


def plot_throughput(sources: list[Source], path: Path) -> Path:
    from common import plots
    import matplotlib.pyplot as plt
    ratios = throughput_ratios(sources)
    if not ratios:
        raise CompareError("--plot: no throughput figures in the first argument to plot relative to")
    names = list(ratios)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.35 * len(names) * max(1, len(sources) - 1) + 1.5)))
    h = 0.8 / len(sources)
    for i, s in enumerate(sources):
        ys = [j + (i - (len(sources) - 1) / 2) * h for j in range(len(names))]
        xs = [ratios[n][i] or 0.0 for n in names]
        ax.barh(ys, xs, height=h, label=f"{s.label} ({s.device()})")
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=f"throughput relative to {sources[0].label} (higher is faster)",
           title="relative throughput per model")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return plots.save_figure(fig, path)


# ------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.compare", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="results directories or JSON files (first = reference)")
    ap.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG of relative throughput per model")
    ap.add_argument("--force", action="store_true", help="compare mismatched inputs anyway, marked MISMATCH")
    ap.add_argument("--all-metrics", action="store_true", help="every metric, not only headline/test/baseline")
    ap.add_argument("--out", type=Path, default=None, help="write the tables to this file instead of stdout")
    a = ap.parse_args(argv)
    if len(a.inputs) < 2:
        ap.error("give at least two inputs to compare")
    try:
        sources = [load_source(x) for x in a.inputs]
        _label_sources(sources)
        marks = mismatches(sources)
        if marks and not a.force:
            raise CompareError("refusing to compare apples and oranges (--force shows them, marked MISMATCH):\n  "
                               + "\n  ".join(marks))
        text = render(build_tables(sources, a.all_metrics, marks), sources, a.format)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(text)
        else:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        if marks:
            print(f"compare: WARNING: {len(marks)} mismatch(es) shown because of --force:\n  " + "\n  ".join(marks),
                  file=sys.stderr)
        if a.plot:
            print(f"compare: wrote {plot_throughput(sources, a.plot)}", file=sys.stderr)
        return 0
    except CompareError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
