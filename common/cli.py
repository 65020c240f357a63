"""The command-line options every experiment shares, value checks, and ``--rerun``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .device import DEVICE_CHOICES
from .results import sigterm_as_interrupt

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMON_KEYS = ("seed", "seeds", "smoke", "device", "results_dir", "data_dir", "synthetic")


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
    g.add_argument("--rerun", metavar="RESULT_JSON", default=None,
                   help="re-execute the exact configuration recorded in a result JSON "
                        "(other options given on the command line still override it)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``--rerun X.json`` the recorded config becomes the defaults first.

    Also makes SIGTERM behave like Ctrl-C so that an interrupted run cleans up after itself.
    """
    args = parser.parse_args(argv)
    if args.rerun:
        path = Path(args.rerun)
        try:
            record = json.loads(path.read_text())
            config = record["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            parser.error(f"--rerun {path}: not a readable result JSON with a config ({e})")
        if config.get("experiment") != parser.get_default("experiment"):
            parser.error(f"--rerun {path}: that result was made by {config.get('experiment')!r}, "
                         f"not {parser.get_default('experiment')!r}")
        known = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in config.items() if k in known and k != "rerun"})
        args = parser.parse_args(argv)
    sigterm_as_interrupt()
    return args


def apply_threads(args: argparse.Namespace, device) -> None:
    """On the CPU, use ``--threads`` torch threads (if given); recorded in the result's environment."""
    import torch

    if args.threads and torch.device(device).type == "cpu":
        torch.set_num_threads(args.threads)


def seed_list(args: argparse.Namespace) -> list[int]:
    """The seeds to run: ``seed, seed+1, ..., seed+seeds-1``."""
    return [args.seed + i for i in range(args.seeds)]


def config_of(args: argparse.Namespace) -> dict:
    """Every argument the script ran with (for the JSON's ``config``), minus ``--rerun`` itself."""
    return {k: v for k, v in vars(args).items() if k != "rerun"}
