"""The command-line options every experiment shares, value checks, and ``--rerun``."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import repro
from .device import DEVICE_CHOICES
from .results import sigterm_as_interrupt
from .schema import load_json

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE_SEEDS = 2   # the smoke rule: a --smoke run keeps at most this many seeds (two, so seeds can differ)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def base_parser(experiment: str, description: str, seeds: int = 1, threads: int | None = None
                ) -> argparse.ArgumentParser:
    """A parser with the suite's shared options; scripts add their own (epochs, lr, ...).

    ``threads`` is the script's default for ``--threads`` (torch's CPU threads; None: torch's own
    default). Tiny models train fastest on one thread: a second one only adds synchronisation, and
    collapses when the cores are shared.
    """
    p = argparse.ArgumentParser(prog=f"python experiments/{experiment}.py", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(experiment=experiment)
    g = p.add_argument_group("suite options")
    g.add_argument("--seed", type=int, default=0, help="first seed; seeds are seed, seed+1, ...")
    g.add_argument("--seeds", type=positive_int, default=seeds, help="number of seeds to run")
    g.add_argument("--threads", type=positive_int, default=threads,
                   help="torch CPU threads (default: torch's own choice when not set)")
    g.add_argument("--smoke", action="store_true", help="tiny configuration (a few batches) for CI")
    g.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to train")
    g.add_argument("--results-dir", default=str(REPO_ROOT / "results"), help="where the JSON and plots go")
    g.add_argument("--data-dir", default=None, help="dataset root (default: $DATA_DIR, else ./data)")
    g.add_argument("--synthetic", action="store_true",
                   help="use the labelled synthetic stand-in instead of the real data")
    g.add_argument("--synthetic-if-missing", action="store_true",
                   help="use the labelled synthetic stand-in only for a dataset that is not found "
                        "(run_all.sh passes this when its data check finds datasets missing)")
    g.add_argument("--tf32", action="store_true",
                   help="allow TF32 for CUDA matmuls and cuDNN convolutions/RNNs (default: off, full fp32; "
                        "recorded in the result's environment.numerics)")
    g.add_argument("--strict-determinism", action="store_true",
                   help="fail on an op that has no deterministic implementation "
                        "(use_deterministic_algorithms(True, warn_only=False)) instead of warning, and fill new "
                        "tensors with NaN as torch does by default (off otherwise, for speed: common/repro.py)")
    g.add_argument("--rerun", metavar="RESULT_JSON", default=None,
                   help="re-execute the exact configuration recorded in a result JSON "
                        "(other options given on the command line still override it)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None,
               smoke: dict | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``--rerun X.json`` the recorded config becomes the defaults first.

    ``smoke`` is the script's ``SMOKE`` block: with ``--smoke``, each of its keys that is an option
    left at its default takes the smoke value (an option given on the command line wins); keys that
    are not options (e.g. ``max_batches``) the script reads from its ``SMOKE`` block itself.

    Also makes SIGTERM behave like Ctrl-C so that an interrupted run cleans up after itself, and
    sets the numerics (``--tf32``, ``--strict-determinism``; see ``common.repro``) before any CUDA work.
    """
    args = parser.parse_args(argv)
    if args.rerun:
        path = Path(args.rerun)
        try:
            config = load_json(path)["config"]
        except (ValueError, KeyError, TypeError) as e:
            parser.error(f"--rerun {path}: not a readable result JSON with a config ({e})")
        if config.get("experiment") != parser.get_default("experiment"):
            parser.error(f"--rerun {path}: that result was made by {config.get('experiment')!r}, "
                         f"not {parser.get_default('experiment')!r}")
        known = {a.dest for a in parser._actions} | set(parser._defaults)   # experiment: a set_defaults key
        # keys ending in _used record what the run derived from its options (05: epochs_used), not options
        unknown = sorted(k for k in config if k not in known and not k.endswith("_used"))
        if unknown:   # options renamed or removed since that result was made: the rerun is not exact
            print(f"warning: --rerun {path}: this version has no option(s) {unknown}; they take today's defaults, "
                  f"so the rerun is not that result's exact configuration", file=sys.stderr)
        parser.set_defaults(**{k: v for k, v in config.items() if k in known and k != "rerun"})
        args = parser.parse_args(argv)
    if smoke and args.smoke:
        for key, value in smoke.items():
            if hasattr(args, key) and getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    from . import data
    data.SYNTHETIC_IF_MISSING = getattr(args, "synthetic_if_missing", False)
    sigterm_as_interrupt()
    from .device import tune_cpu_allocator
    tune_cpu_allocator()   # before the data is loaded: every large buffer after this stays in the process
    repro.configure_numerics(tf32=getattr(args, "tf32", False),
                             strict_determinism=getattr(args, "strict_determinism", False))
    return args


def apply_threads(args: argparse.Namespace, device) -> None:
    """On the CPU, use ``--threads`` torch threads (if given); recorded in the result's environment."""
    import torch

    if args.threads and torch.device(device).type == "cpu":
        torch.set_num_threads(args.threads)


def seed_list(args: argparse.Namespace) -> list[int]:
    """The seeds to run: ``seed, seed+1, ..., seed+seeds-1``; a ``--smoke`` run keeps the first ``SMOKE_SEEDS``."""
    seeds = [args.seed + i for i in range(args.seeds)]
    return seeds[:SMOKE_SEEDS] if getattr(args, "smoke", False) else seeds


@dataclass
class Start:
    """What every run knows from its first line: where it computes, when it started (for the result's timings)."""
    device: "torch.device"
    started_at: str
    t0: float

    def wall_s(self) -> float:
        return time.perf_counter() - self.t0


def start(args: argparse.Namespace) -> Start:
    """Choose the device (``DeviceError`` if unusable), apply ``--threads``, note the start time."""
    from .device import choose_device
    from .results import now_iso
    started_at, t0 = now_iso(), time.perf_counter()
    device = choose_device(args.device)
    apply_threads(args, device)
    from .parallel import check_workers
    check_workers(args, device)   # --workers above 1 on a GPU, or with several threads a run: a setup error
    return Start(device, started_at, t0)


def fail(error: Exception) -> int:
    """A setup error (bad data, no such device, a bad option value): one line on stderr, exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def config_of(args: argparse.Namespace, optional: tuple[str, ...] = ()) -> dict:
    """Every argument the script ran with (for the JSON's ``config``), minus ``--rerun`` itself.

    ``--tf32``, ``--strict-determinism`` and ``--synthetic-if-missing`` appear only when given: results
    made before these options existed then keep comparing equal (tools.compare refuses different
    configs); the numerics are always in ``environment.numerics``, the data's source in ``data.source``.
    A script adds its own such switches (added later, off by default) in ``optional``.
    """
    optional = ("tf32", "strict_determinism", "synthetic_if_missing", *optional)
    return {k: v for k, v in vars(args).items() if k != "rerun" and not (k in optional and v is False)}
