#!/usr/bin/env python
"""01_tensors_and_layers: tensors, linear layers, parameter counts and activations (course transcript lines 19-142).

Reproduces the course's first chapter without training anything: tensors from a list and from a NumPy
array (shape, dtype int64), add/subtract/element-wise/matrix products and the error for incompatible shapes,
nn.Linear(3, 2) on a 1x3 input, nn.Sequential 10->18->20->5, the parameter count of the course's two-layer
network 8->4->2 (46, by formula and by summing numel()), a table of parameter counts vs. hidden layers and
width, sigmoid(6) = 0.9975, softmax over the last dimension, the forward pass of 5 animals x 6 features for
binary, multi-class and regression heads, and a plot of sigmoid/softmax/ReLU/LeakyReLU/ELU with their
derivatives. No dataset is read (data.name "none"). Seeds change only the random layer weights and inputs.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/ and experiments/

import numpy as np
import torch
import torch.nn as nn

from common import cli, plots, repro
from common.device import DeviceError
from experiments import no_dataset

EXPERIMENT = "01_tensors_and_layers"
COURSE_FIGURES = {"params.course_net_numel": 46, "activation.sigmoid_6": 0.9975, "activation.softmax_max": 0.842}

DEFAULTS = {
    "seeds": 3,
    "max_hidden_layers": 4,        # parameter table: 0..4 hidden layers ...
    "widths": "4,16,64,256",       # ... of these widths
    "plot_points": 401,            # points of the activation curves on [-8, 8]
}
SMOKE = {"max_hidden_layers": 2, "plot_points": 81}  # --smoke: a shorter table, coarser curves
# Where this script departs from the course transcript (lines 19-142): nowhere. Every example follows it;
# the few values it does not give (the seeded random inputs of the forward passes) no course figure depends on.
DEVIATIONS = []


# --------------------------------------------------------------------------- models (importable)
def course_net() -> nn.Sequential:
    """The course's two-layer network: 8 inputs, 4 hidden neurons, 2 outputs (46 parameters)."""
    return nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))


def mlp(sizes: list[int], activation: type[nn.Module] | None = None, head: nn.Module | None = None) -> nn.Sequential:
    """Linear layers of the given sizes (optionally an activation between them and a final head)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if activation is not None and i < len(sizes) - 2:
            layers.append(activation())
    if head is not None:
        layers.append(head)
    return nn.Sequential(*layers)


def params_by_formula(sizes: list[int]) -> int:
    """Each neuron of a layer has (inputs + 1) parameters: sum over layers of (n_in + 1) * n_out."""
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def params_by_numel(model: nn.Module) -> int:
    """What the course does in PyTorch: sum ``p.numel()`` over ``model.parameters()``."""
    return sum(p.numel() for p in model.parameters())


ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    # softmax of the pair (x, 0): the first component, i.e. softmax over a 2-class last dimension
    "softmax": lambda x: torch.softmax(torch.stack([x, torch.zeros_like(x)], dim=-1), dim=-1)[..., 0],
    "relu": nn.ReLU(),
    "leaky_relu": nn.LeakyReLU(negative_slope=0.01),
    "elu": nn.ELU(),
}


def activation_and_derivative(name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation on ``x`` and its derivative d act / dx by autograd (element-wise)."""
    x = x.detach().clone().requires_grad_(True)
    y = ACTIVATIONS[name](x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), grad


def benchmark_cases() -> list[dict]:
    """Nothing is trained in this experiment, so there is nothing to benchmark."""
    return []


# --------------------------------------------------------------------------- CLI
def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=DEFAULTS["seeds"])
    p.add_argument("--max-hidden-layers", type=cli.positive_int, default=DEFAULTS["max_hidden_layers"],
                   help="parameter table: 0..N hidden layers")
    p.add_argument("--widths", default=DEFAULTS["widths"], help="parameter table: hidden widths (comma-separated)")
    return cli.parse_args(p, argv, smoke=SMOKE)


def parse_widths(text: str) -> list[int]:
    """``--widths`` as a list of positive integers (ValueError otherwise)."""
    widths = [int(w) for w in text.split(",") if w.strip()]
    if not widths or min(widths) < 1:
        raise ValueError("--widths needs positive integers, e.g. 4,16,64")
    return widths


# --------------------------------------------------------------------------- the story
def tensor_basics() -> tuple[dict, dict]:
    """Tensors from a list and a NumPy array, arithmetic, and the incompatible-shape error."""
    m, notes = {}, {}
    lst = [[1, 2, 3], [4, 5, 6]]
    t_list = torch.tensor(lst)
    t_np = torch.tensor(np.array(lst))
    m["tensors.from_list.rows"], m["tensors.from_list.cols"] = t_list.shape
    m["tensors.from_list.is_int64"] = int(t_list.dtype == torch.int64)
    m["tensors.from_numpy.is_int64"] = int(t_np.dtype == torch.int64)
    m["tensors.from_numpy.equals_list"] = int(torch.equal(t_list, t_np))
    notes["from_list"] = {"shape": list(t_list.shape), "dtype": str(t_list.dtype)}

    a = torch.tensor([[1, 1], [2, 2]])
    b = torch.tensor([[2, 2], [3, 3]])
    ops = {"add": a + b, "subtract": a - b, "elementwise": a * b, "matmul": a @ b}
    expected = {"add": [[3, 3], [5, 5]], "subtract": [[-1, -1], [-1, -1]],
                "elementwise": [[2, 2], [6, 6]], "matmul": [[5, 5], [10, 10]]}
    for k, v in ops.items():
        m[f"ops.{k}_correct"] = int(v.tolist() == expected[k])
    notes["ops"] = {"a": a.tolist(), "b": b.tolist(), **{k: v.tolist() for k, v in ops.items()}}

    try:
        torch.tensor([[1, 2, 3], [4, 5, 6]]) + torch.tensor([[1, 2], [3, 4]])
        m["ops.incompatible_add_raises"] = 0
        notes["incompatible_add_error"] = None
    except RuntimeError as e:
        m["ops.incompatible_add_raises"] = 1
        notes["incompatible_add_error"] = str(e)
    return m, notes


def linear_layers() -> dict:
    """nn.Linear(3, 2) on a 1x3 input, its weight/bias shapes, and nn.Sequential 10->18->20->5."""
    m = {}
    x = torch.tensor([[0.3471, 0.4547, -0.2356]])  # the course's 1x3 input tensor
    linear = nn.Linear(in_features=3, out_features=2)
    out = linear(x)
    m["linear.output_rows"], m["linear.output_cols"] = out.shape
    m["linear.weight_rows"], m["linear.weight_cols"] = linear.weight.shape
    m["linear.bias_len"] = linear.bias.shape[0]
    m["linear.output_equals_xWt_plus_b"] = int(torch.allclose(out, x @ linear.weight.T + linear.bias))
    m["linear.output_0"] = float(out[0, 0].detach())  # depends on the random initialisation (seed)

    seq = mlp([10, 18, 20, 5])
    out = seq(torch.randn(4, 10)).detach()
    m["sequential.output_rows"], m["sequential.output_cols"] = out.shape
    m["sequential.params"] = params_by_numel(seq)
    m["sequential.params_formula"] = params_by_formula([10, 18, 20, 5])
    return m


def parameter_counts(max_hidden: int, widths: list[int]) -> tuple[dict, list[dict]]:
    """The course's 46, per layer, and a table of counts vs. number and width of hidden layers (8 in, 2 out)."""
    m = {}
    net = course_net()
    m["params.course_net_formula"] = params_by_formula([8, 4, 2])
    m["params.course_net_numel"] = params_by_numel(net)
    m["params.course_layer1"] = params_by_numel(net[0])
    m["params.course_layer2"] = params_by_numel(net[1])
    assert m["params.course_net_formula"] == m["params.course_net_numel"], "formula and numel() disagree"
    table = []
    for depth in range(max_hidden + 1):
        for width in (widths if depth else widths[:1]):
            sizes = [8] + [width] * depth + [2]
            by_formula, by_numel = params_by_formula(sizes), params_by_numel(mlp(sizes))
            assert by_formula == by_numel, f"{sizes}: formula {by_formula} != numel {by_numel}"
            table.append({"hidden_layers": depth, "width": width if depth else 0, "sizes": sizes,
                          "params": by_numel})
            m[f"params.hidden{depth}_width{width if depth else 0}"] = by_numel
    return m, table


def activations_and_forward() -> tuple[dict, dict]:
    """sigmoid(6), the course's softmax example, and forward passes of 5 samples x 6 features."""
    m, notes = {}, {}
    m["activation.sigmoid_6"] = float(nn.Sigmoid()(torch.tensor([6.0]))[0])
    pre = torch.tensor([[4.3, 6.1, 2.3]])  # the course's 1x3 pre-activation output
    probs = nn.Softmax(dim=-1)(pre)
    m["activation.softmax_sum"] = float(probs.sum())
    m["activation.softmax_max"] = float(probs.max())
    m["activation.softmax_argmax"] = int(probs.argmax())
    notes["softmax_course_example"] = {"input": pre.tolist(), "output": probs.tolist()}

    x = torch.randn(5, 6)  # 5 animals x 6 features
    binary = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 1), nn.Sigmoid())
    multi = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3), nn.Softmax(dim=-1))
    regression = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 1))
    with torch.no_grad():
        yb, ym, yr = binary(x), multi(x), regression(x)
    m["forward.binary.rows"], m["forward.binary.cols"] = yb.shape
    m["forward.binary.min"], m["forward.binary.max"] = float(yb.min()), float(yb.max())
    m["forward.binary.mean"] = float(yb.mean())
    m["forward.binary.predicted_class1"] = int((yb > 0.5).sum())
    m["forward.multiclass.rows"], m["forward.multiclass.cols"] = ym.shape
    m["forward.multiclass.max_row_sum_error"] = float((ym.sum(-1) - 1).abs().max())
    m["forward.multiclass.min"], m["forward.multiclass.max"] = float(ym.min()), float(ym.max())
    m["forward.regression.rows"], m["forward.regression.cols"] = yr.shape
    m["forward.regression.mean"] = float(yr.mean())
    notes["forward"] = {"binary": yb.tolist(), "multiclass": ym.tolist(), "regression": yr.tolist(),
                        "multiclass_labels": ym.argmax(-1).tolist()}
    return m, notes


def derivatives(x: torch.Tensor) -> tuple[dict, dict]:
    """Each activation and its derivative on ``x``; a few values that show saturation."""
    m, curves = {}, {}
    for name in ACTIVATIONS:
        y, d = activation_and_derivative(name, x)
        curves[name] = (y, d)
    at = lambda name, v: float(activation_and_derivative(name, torch.tensor([v]))[1][0])
    m["derivative.sigmoid_max"] = float(curves["sigmoid"][1].max())
    m["derivative.sigmoid_at_6"] = at("sigmoid", 6.0)
    m["derivative.softmax_at_6"] = at("softmax", 6.0)
    m["derivative.relu_at_6"] = at("relu", 6.0)
    m["derivative.relu_at_-6"] = at("relu", -6.0)
    m["derivative.leaky_relu_at_-6"] = at("leaky_relu", -6.0)
    m["derivative.elu_at_-6"] = at("elu", -6.0)
    return m, curves


def plot_activations(x: torch.Tensor, curves: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, (y, d) in curves.items():
        style = {"ls": "--", "lw": 2.5, "label": "softmax([x, 0])[0] (= sigmoid)"} if name == "softmax" else {"label": name}
        axes[0].plot(x, y, **style)
        axes[1].plot(x, d, **style)
    axes[0].set(title="activations", xlabel="x", ylabel="f(x)", ylim=(-1.5, 4))
    axes[1].set(title="derivatives (sigmoid/softmax saturate: ~0 for |x| large)", xlabel="x", ylabel="f'(x)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return plots.save_figure(fig, path)


def plot_param_table(table: list[dict], path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for width in sorted({r["width"] for r in table if r["width"]}):
        rows = [r for r in table if r["width"] in (width, 0)]
        ax.plot([r["hidden_layers"] for r in rows], [r["params"] for r in rows], marker="o", label=f"width {width}")
    ax.set(title="parameters of an 8 -> ... -> 2 network", xlabel="hidden layers", ylabel="parameters", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.save_figure(fig, path)


def run_seed(seed: int, max_hidden: int, widths: list[int], x_plot: torch.Tensor) -> tuple[dict, dict]:
    """Every section for one seed: its flat metrics (name -> number) and its worked examples for the JSON.

    The sections run in this order on one random stream: the layers' initial weights and the random
    inputs of a seed depend on it.
    """
    repro.seed_everything(seed)
    m, tensor_notes = tensor_basics()
    m.update(linear_layers())
    pm, table = parameter_counts(max_hidden, widths)
    am, activation_notes = activations_and_forward()
    dm, curves = derivatives(x_plot)
    m.update(pm | am | dm)
    print(f"seed {seed}: params 8->4->2 = {m['params.course_net_numel']}, sigmoid(6) = "
          f"{m['activation.sigmoid_6']:.4f}, binary outputs in [{m['forward.binary.min']:.3f}, "
          f"{m['forward.binary.max']:.3f}]")
    return m, {"notes": {"tensors": tensor_notes, "activations": activation_notes}, "table": table, "curves": curves}


def make_plots(results_dir: str, x_plot: torch.Tensor, examples: dict) -> None:
    pdir = plots.plot_dir(results_dir, EXPERIMENT)
    plot_activations(x_plot, examples["curves"], pdir / "activations.png")
    plot_param_table(examples["table"], pdir / "parameter_counts.png")


def activation_history(x_plot: torch.Tensor, curves: dict) -> dict:
    return {"activation_curves": {"x": x_plot, **{k: {"f": y, "df": d} for k, (y, d) in curves.items()}}}


def extra_record(examples: dict) -> dict:
    return {"notes": examples["notes"], "parameter_table": examples["table"], "course_figures": COURSE_FIGURES}


def report(mean: dict, notes: dict) -> None:
    print(f"01: parameters of 8->4->2: formula {mean['params.course_net_formula']:.0f}, numel "
          f"{mean['params.course_net_numel']:.0f} (course: 46); sigmoid(6) = {mean['activation.sigmoid_6']:.4f} "
          f"(course: 0.9975); softmax max {mean['activation.softmax_max']:.3f} (course: 0.842); "
          f"Sequential 10->18->20->5: {mean['sequential.params']:.0f} parameters; incompatible add raises: "
          f"{notes['tensors']['incompatible_add_error']!r}")


def main(argv=None) -> int:
    args = parse(argv)
    try:
        start = cli.start(args)  # nothing runs there (all on the CPU); recorded for the environment block
        widths = parse_widths(args.widths)
    except (DeviceError, ValueError) as e:
        return cli.fail(e)
    seeds = cli.seed_list(args)
    x_plot = torch.linspace(-8, 8, SMOKE["plot_points"] if args.smoke else DEFAULTS["plot_points"])
    runs, eval_s = no_dataset.run_seeds(lambda seed: run_seed(seed, args.max_hidden_layers, widths, x_plot),
                                        seeds, start.device)
    examples = runs[-1][1]  # the last seed's worked examples (tables and curves are the same for every seed)

    make_plots(args.results_dir, x_plot, examples)
    mean = no_dataset.write_result(
        EXPERIMENT, args, start, seeds, runs, eval_s, notes="no dataset is read: tensors and layers only",
        headline="params.course_net_numel", history=activation_history(x_plot, examples["curves"]),
        script=__file__, compute_device="cpu",  # every tensor here is made on the CPU, whatever --device says
        extra=extra_record(examples), deviations=DEVIATIONS)
    report(mean, examples["notes"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
