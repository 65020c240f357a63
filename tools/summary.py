"""``python -m tools.summary RESULTS_DIR [--since EPOCH] [--experiments 04 07]``: the end-of-run table.

One row per result JSON: experiment, status, headline metric (mean ± std), wall time, data source.
Used by ``run_all.sh``; exits 1 if any listed result is not ``ok``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.schema import read_result


def rows(results_dir: Path, since: float = 0.0, prefixes: list[str] | None = None) -> list[dict]:
    out = []
    for path in sorted(results_dir.glob("[0-9][0-9]_*.json")):
        if path.stat().st_mtime < since or (prefixes and not any(path.name.startswith(p) for p in prefixes)):
            continue
        try:
            r = read_result(path)
        except ValueError as e:
            out.append({"experiment": path.stem, "status": "unreadable", "headline": str(e),
                        "wall": "", "source": ""})
            continue
        h = r["headline"]
        value, std = r["metrics"].get(h), r["std"].get(h)
        metric = f"{h} = {value:.4g}" + (f" ± {std:.2g}" if std else "") if value is not None else f"{h} = n/a"
        wall = r["timings"].get("wall_s")
        out.append({"experiment": r["experiment"], "status": r["status"], "headline": metric,
                    "wall": f"{wall:.1f}s" if wall is not None else "",
                    "source": "no dataset" if r["data"].get("name") == "none" else r["data"].get("source", "?")})
    return out


def format_table(table: list[dict]) -> str:
    cols = [("experiment", "experiment"), ("status", "status"), ("headline", "headline metric"),
            ("wall", "wall time"), ("source", "data")]
    widths = [max(len(t), *(len(str(r[k])) for r in table)) if table else len(t) for k, t in cols]
    lines = ["  ".join(t.ljust(w) for (_, t), w in zip(cols, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(r[k]).ljust(w) for (k, _), w in zip(cols, widths)) for r in table]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results_dir", type=Path)
    ap.add_argument("--since", type=float, default=0.0, help="only results written after this UNIX time")
    ap.add_argument("--experiments", nargs="*", default=None, help="only these numeric prefixes (e.g. 04 07)")
    a = ap.parse_args(argv)
    table = rows(a.results_dir, a.since, a.experiments)
    print(format_table(table))
    synthetic = [r["experiment"] for r in table if r["source"] == "synthetic"]
    if synthetic:
        print(f"\nNOTE: {len(synthetic)} result(s) ran on SYNTHETIC stand-in data, not the real datasets: "
              f"{', '.join(synthetic)}.\n      Their figures say nothing about the course's models on real data.")
    return 0 if all(r["status"] == "ok" for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
