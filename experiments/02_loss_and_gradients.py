#!/usr/bin/env python
"""02_loss_and_gradients: one-hot targets, cross-entropy, backpropagation, SGD, learning rate, momentum and vanishing gradients (course transcript lines 143-196, 229-279).

Reproduces the course's loss and gradient chapter: one-hot encoding by hand and with F.one_hot,
CrossEntropyLoss on raw scores with a one-hot target and with a class index (equal), .backward() filling the
.grad of every layer, a manual update ``w -= lr * w.grad`` that gives exactly the parameters of one optim.SGD
step; SGD from x = -2 on a U-shaped function (f(x) = x^2, 10 steps) with a good, a ten times smaller and a
too-high learning rate, and on a non-convex function (f(x) = x^4 - 2x^2 - 0.5x, 100 steps) with momentum 0
(stuck in the local minimum) and 0.9 (reaches the global one near x = 1); and the per-layer gradient norms of
a deep sigmoid, ReLU and LeakyReLU MLP at PyTorch's default initialisation, plus ReLU with Kaiming
initialisation for contrast (vanishing gradients). No dataset is read.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/ and experiments/

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import cli, plots, repro
from common.device import DeviceError
from experiments import no_dataset

EXPERIMENT = "02_loss_and_gradients"
COURSE_SCORES = [-5.2, 4.6, 0.8]  # raw scores (before softmax) of the course's cross-entropy example
ACTIVATIONS = ("sigmoid", "relu", "leaky_relu", "relu_kaiming")  # the vanishing-gradient MLPs

DEFAULTS = {
    "seeds": 3,
    "threads": 1,           # tiny tensors: a second thread only adds synchronisation
    "lr": 0.001,            # manual update vs. one optim.SGD step
    "lr_good": 0.2,         # x^2 from -2: a good learning rate (and a ten times smaller one) ...
    "lr_high": 1.0,         # ... and a too-high one (bounces between -2 and 2)
    "u_steps": 10,
    "momentum_lr": 0.01,    # the non-convex function, momentum 0 vs 0.9
    "momentum_steps": 100,
    "depth": 20,            # vanishing gradients: hidden layers, width, batch
    "width": 64,
    "batch_size": 128,
}
SMOKE = {"depth": 4}  # --smoke: shallow vanishing-gradient MLPs; everything else is already instant

# Where this script departs from the course transcript (lines 143-196, 229-279), and why.
DEVIATIONS = [
    {"what": "the functions of the SGD demos",
     "course": "a U-shaped function, then a non-convex one (formulas not given) whose global minimum is near "
               "x = 1, with a local minimum that traps SGD without momentum",
     "here": "f(x) = x^2, and f(x) = x^4 - 2x^2 - 0.5x (local minimum x = -0.93, global minimum x = 1.06)",
     "why": "the transcript gives no formula; these have the shapes and the minima it describes"},
    {"what": "learning rates and start of the SGD demos",
     "course": "from x = -2, 10 steps with a learning rate that gets close to the minimum, one ten times "
               "smaller, and a too-high one that bounces; 100 steps on the non-convex function; no values "
               "given, and 'typical values range from 0.01 to 0.0001'",
     "here": "x^2 from -2: lr 0.2, 0.02 and 1.0 (bounces between -2 and 2); the non-convex function from -2 "
             "with lr 0.01",
     "why": "on x^2 each step multiplies x by (1 - 2 lr): in the course's typical range ten steps hardly move "
            "x (lr 0.01 leaves it at -1.63), so the good rate that gets close in ten steps lies above that "
            "range; the non-convex demo keeps a typical rate and starts where the U-shaped one does"},
]


# --------------------------------------------------------------------------- models and functions
def course_net() -> nn.Sequential:
    """The course's three linear layers used for the backpropagation example (16 -> 8 -> 4 -> 2)."""
    return nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4), nn.Linear(4, 2))


def deep_mlp(activation: str, depth: int, width: int, in_features: int = 16, classes: int = 2) -> nn.Sequential:
    """``depth`` hidden Linear layers of ``width`` with ``activation`` after each, then a linear head.

    ``relu_kaiming`` is ReLU with He (Kaiming normal, fan_in) weights and zero biases instead of PyTorch's
    default ``nn.Linear`` initialisation (uniform, bound 1/sqrt(fan_in)).
    """
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "relu_kaiming": nn.ReLU}[activation]
    layers: list[nn.Module] = []
    sizes = [in_features] + [width] * depth
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(sizes[-1], classes))
    if activation == "relu_kaiming":
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def u_shaped(x: torch.Tensor) -> torch.Tensor:
    """The convex, U-shaped function of the learning-rate demo (minimum at x = 0)."""
    return x ** 2


def non_convex(x: torch.Tensor) -> torch.Tensor:
    """A tilted double well: local minimum near x = -0.93, global minimum near x = 1.06."""
    return x ** 4 - 2 * x ** 2 - 0.5 * x


def sgd_trajectory(f, x0: float, lr: float, momentum: float, steps: int) -> list[float]:
    """Minimise ``f`` from ``x0`` with torch.optim.SGD; return x after every step (x0 first)."""
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=momentum)
    xs = [x0]
    for _ in range(steps):
        opt.zero_grad()
        f(x).backward()
        opt.step()
        xs.append(float(x.detach()))
    return xs


def benchmark_cases() -> list[dict]:
    """Nothing here is trained beyond single SGD steps, so there is nothing to benchmark."""
    return []


# --------------------------------------------------------------------------- CLI
def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=DEFAULTS["seeds"],
                        threads=DEFAULTS["threads"])
    p.add_argument("--lr", type=cli.positive_float, default=DEFAULTS["lr"],
                   help="learning rate of the manual update vs. optim.SGD comparison")
    p.add_argument("--lr-good", type=cli.positive_float, default=DEFAULTS["lr_good"],
                   help="U-shaped demo: a good learning rate")
    p.add_argument("--lr-high", type=cli.positive_float, default=DEFAULTS["lr_high"],
                   help="U-shaped demo: a too-high learning rate (1.0 on x^2 bounces between -2 and 2)")
    p.add_argument("--u-steps", type=cli.positive_int, default=DEFAULTS["u_steps"], help="U-shaped demo: SGD steps")
    p.add_argument("--momentum-lr", type=cli.positive_float, default=DEFAULTS["momentum_lr"],
                   help="non-convex demo: learning rate")
    p.add_argument("--momentum-steps", type=cli.positive_int, default=DEFAULTS["momentum_steps"],
                   help="non-convex demo: SGD steps")
    p.add_argument("--depth", type=cli.positive_int, default=DEFAULTS["depth"], help="vanishing gradients: hidden layers")
    p.add_argument("--width", type=cli.positive_int, default=DEFAULTS["width"], help="vanishing gradients: hidden width")
    p.add_argument("--batch-size", type=cli.positive_int, default=DEFAULTS["batch_size"],
                   help="vanishing gradients: batch size")
    return cli.parse_args(p, argv, smoke=SMOKE)


# --------------------------------------------------------------------------- the story
def one_hot_and_cross_entropy() -> tuple[dict, dict]:
    m, notes = {}, {}
    manual = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]])  # y = 0, 1, 2 with 3 classes, by hand
    with_f = torch.stack([F.one_hot(torch.tensor(y), num_classes=3) for y in range(3)])
    m["onehot.manual_equals_F"] = int(torch.equal(manual, with_f))
    m["onehot.num_classes"] = with_f.shape[1]
    notes["one_hot"] = with_f.tolist()

    scores = torch.tensor(COURSE_SCORES)
    one_hot_target = F.one_hot(torch.tensor(0), num_classes=3)
    criterion = nn.CrossEntropyLoss()
    loss_onehot = criterion(scores.double(), one_hot_target.double())
    loss_index = criterion(scores.double().unsqueeze(0), torch.tensor([0]))
    m["loss.ce_onehot"] = float(loss_onehot)
    m["loss.ce_index"] = float(loss_index)
    m["loss.ce_abs_diff"] = abs(float(loss_onehot) - float(loss_index))
    m["loss.ce_equal"] = int(torch.allclose(loss_onehot, loss_index))
    # a correct, confident prediction has a low loss: the same scores with the true class = 1
    m["loss.ce_correct_class"] = float(criterion(scores.double().unsqueeze(0), torch.tensor([1])))
    notes["cross_entropy"] = {"scores": COURSE_SCORES, "target": 0}
    return m, notes


def backward_and_sgd_step(lr: float) -> dict:
    """.backward() fills .grad of each layer; manual ``w -= lr * w.grad`` equals one optim.SGD step."""
    m = {}
    model = course_net()
    twin = course_net()
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 16), torch.randint(0, 2, (8,))
    m["backward.grads_none_before"] = int(all(p.grad is None for p in model.parameters()))
    criterion = nn.CrossEntropyLoss()
    for net in (model, twin):
        loss = criterion(net(x), y)
        loss.backward()
    m["backward.loss"] = float(loss.detach())
    m["backward.layers_with_grad"] = sum(int(layer.weight.grad is not None and layer.bias.grad is not None
                                             and layer.weight.grad.shape == layer.weight.shape) for layer in model)
    m["backward.layer0_weight_grad_norm"] = float(model[0].weight.grad.norm())
    with torch.no_grad():  # the course's manual update, layer by layer
        for layer in model:
            layer.weight -= lr * layer.weight.grad
            layer.bias -= lr * layer.bias.grad
    opt = torch.optim.SGD(twin.parameters(), lr=lr)
    opt.step()
    pairs = [(a.detach(), b.detach()) for a, b in zip(model.parameters(), twin.parameters())]
    m["sgd.manual_equals_optim"] = int(all(torch.equal(a, b) for a, b in pairs))
    m["sgd.max_abs_diff"] = max(float((a - b).abs().max()) for a, b in pairs)
    return m


def learning_rate_demo(args) -> tuple[dict, dict]:
    """SGD on x^2 from -2 with a good, a 10x smaller and a too-high learning rate."""
    m, traj = {}, {}
    settings = {"good": args.lr_good, "small": args.lr_good / 10, "high": args.lr_high}
    for name, lr in settings.items():
        xs = sgd_trajectory(u_shaped, -2.0, lr, 0.0, args.u_steps)
        traj[name] = {"lr": lr, "x": xs}
        m[f"lr.{name}.lr"] = lr
        m[f"lr.{name}.final_x"] = xs[-1]
        m[f"lr.{name}.final_f"] = float(u_shaped(torch.tensor(xs[-1])))
        m[f"lr.{name}.sign_changes"] = int(np.sum(np.diff(np.sign(xs)) != 0))
    return m, traj


def momentum_demo(args) -> tuple[dict, dict]:
    """SGD for 100 steps on the non-convex function from -2: momentum 0 vs 0.9."""
    m, traj = {}, {}
    grid = torch.linspace(-2.5, 2.5, 50001, dtype=torch.float64)
    fx = non_convex(grid)
    global_x = float(grid[fx.argmin()])
    left = grid < 0
    local_x = float(grid[left][fx[left].argmin()])
    m["momentum.global_min_x"], m["momentum.global_min_f"] = global_x, float(fx.min())
    m["momentum.local_min_x"], m["momentum.local_min_f"] = local_x, float(non_convex(torch.tensor(local_x)))
    for tag, mom in (("m0", 0.0), ("m09", 0.9)):
        xs = sgd_trajectory(non_convex, -2.0, args.momentum_lr, mom, args.momentum_steps)
        traj[tag] = {"momentum": mom, "x": xs}
        m[f"momentum.{tag}.final_x"] = xs[-1]
        m[f"momentum.{tag}.final_f"] = float(non_convex(torch.tensor(xs[-1])))
        m[f"momentum.{tag}.reached_global"] = int(abs(xs[-1] - global_x) < 0.05)
        m[f"momentum.{tag}.stuck_in_local"] = int(abs(xs[-1] - local_x) < 0.05)
    return m, traj


def vanishing_gradients(args, device) -> tuple[dict, dict]:
    """Per-layer weight-gradient norms at initialisation (one batch of standard-normal inputs)."""
    m, norms = {}, {}
    x = torch.randn(args.batch_size, 16).to(device)
    y = torch.randint(0, 2, (args.batch_size,)).to(device)
    for act in ACTIVATIONS:
        model = deep_mlp(act, args.depth, args.width).to(device)
        nn.CrossEntropyLoss()(model(x), y).backward()
        layer_norms = [float(layer.weight.grad.norm()) for layer in model if isinstance(layer, nn.Linear)]
        norms[act] = layer_norms
        ratio = layer_norms[0] / layer_norms[-1]
        m[f"vanishing.{act}.first_layer_grad_norm"] = layer_norms[0]
        m[f"vanishing.{act}.last_layer_grad_norm"] = layer_norms[-1]
        m[f"vanishing.{act}.first_last_ratio"] = ratio
        m[f"vanishing.{act}.log10_first_last_ratio"] = float(np.log10(ratio)) if ratio > 0 else float("-inf")
    m["vanishing.depth"] = args.depth
    return m, norms


def plot_lr_and_momentum(lr_traj: dict, mom_traj: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    grid = torch.linspace(-2.3, 2.3, 400)
    for ax, (name, t) in zip(axes[:3], lr_traj.items()):
        xs = torch.tensor(t["x"])
        ax.plot(grid, u_shaped(grid), color="0.6")
        ax.plot(xs, u_shaped(xs), "o-", ms=4, color="tab:red")
        ax.plot(xs[:1], u_shaped(xs[:1]), "s", color="k", label="start x=-2")
        ax.set(title=f"x^2, lr={t['lr']:g} ({name}), {len(xs) - 1} steps: x={t['x'][-1]:.3g}", xlabel="x", ylabel="f(x)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[3]
    ax.plot(grid, non_convex(grid), color="0.6")
    for (tag, t), c in zip(mom_traj.items(), ("tab:blue", "tab:orange")):
        xs = torch.tensor(t["x"])
        ax.plot(xs, non_convex(xs), "o-", ms=3, alpha=0.7, color=c,
                label=f"momentum {t['momentum']}: x={t['x'][-1]:.2f}")
    ax.set(title=f"x^4-2x^2-0.5x, {len(xs) - 1} steps", xlabel="x", ylabel="f(x)", ylim=(-2, 6))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save_figure(fig, path)


def plot_vanishing(norms: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for act, ys in norms.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=act)
    ax.set(title="weight-gradient norm per layer at initialisation\n(PyTorch default nn.Linear init; relu_kaiming: He init)", xlabel="layer (1 = input side)",
           ylabel="||dL/dW||", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.save_figure(fig, path)


def run_seed(seed: int, args, device) -> tuple[dict, dict]:
    """Every section for one seed: its flat metrics (name -> number) and its worked examples for the JSON.

    The sections run in this order on one random stream: the layers' initial weights and the random
    inputs of a seed depend on it. Only the gradient norms differ between seeds; the trajectories do not.
    """
    repro.seed_everything(seed)
    m, notes = one_hot_and_cross_entropy()
    m.update(backward_and_sgd_step(args.lr))
    lm, lr_traj = learning_rate_demo(args)
    mm, mom_traj = momentum_demo(args)
    vm, norms = vanishing_gradients(args, device)
    m.update(lm | mm | vm)
    print(f"seed {seed}: manual update == SGD step: {bool(m['sgd.manual_equals_optim'])}; first/last "
          f"gradient-norm ratio sigmoid {m['vanishing.sigmoid.first_last_ratio']:.2e}, relu "
          f"{m['vanishing.relu.first_last_ratio']:.2e}, leaky_relu {m['vanishing.leaky_relu.first_last_ratio']:.2e}, "
          f"relu with Kaiming init {m['vanishing.relu_kaiming.first_last_ratio']:.2e}")
    return m, {"notes": notes, "lr_traj": lr_traj, "mom_traj": mom_traj, "norms": norms}


def make_plots(results_dir: str, examples: dict, first_norms: dict) -> None:
    pdir = plots.plot_dir(results_dir, EXPERIMENT)
    plot_lr_and_momentum(examples["lr_traj"], examples["mom_traj"], pdir / "lr_and_momentum.png")
    plot_vanishing(first_norms, pdir / "vanishing_gradients.png")


def report(mean: dict, args) -> None:
    print(f"02: CE one-hot {mean['loss.ce_onehot']:.4f} == CE index {mean['loss.ce_index']:.4f}; manual update == "
          f"SGD step: {bool(mean['sgd.manual_equals_optim'])}; x^2 after {args.u_steps} steps from -2: lr "
          f"{args.lr_good:g} -> {mean['lr.good.final_x']:.3f}, lr {args.lr_good / 10:g} -> {mean['lr.small.final_x']:.3f}, "
          f"lr {args.lr_high:g} -> {mean['lr.high.final_x']:.3f} ({mean['lr.high.sign_changes']:.0f} sign changes); "
          f"non-convex after {args.momentum_steps} steps: momentum 0 -> x={mean['momentum.m0.final_x']:.3f} (local "
          f"min {mean['momentum.local_min_x']:.3f}), momentum 0.9 -> x={mean['momentum.m09.final_x']:.3f} (global min "
          f"{mean['momentum.global_min_x']:.3f}); sigmoid first/last gradient ratio "
          f"{mean['vanishing.sigmoid.first_last_ratio']:.2e} vs relu {mean['vanishing.relu.first_last_ratio']:.2e}, "
          f"leaky_relu {mean['vanishing.leaky_relu.first_last_ratio']:.2e} (default nn.Linear init), relu with Kaiming "
          f"init {mean['vanishing.relu_kaiming.first_last_ratio']:.2e}")


def extra_record(notes: dict, device) -> dict:
    return {"notes": notes,
            # only the vanishing-gradient MLPs run on --device; everything else is made on the CPU
            "compute_note": f"vanishing gradients on {device}; all other sections on the CPU",
            "functions": {"u_shaped": "x**2", "non_convex": "x**4 - 2*x**2 - 0.5*x", "start": -2.0}}


def main(argv=None) -> int:
    args = parse(argv)
    try:
        start = cli.start(args)
    except DeviceError as e:
        return cli.fail(e)
    seeds = cli.seed_list(args)
    runs, eval_s = no_dataset.run_seeds(lambda seed: run_seed(seed, args, start.device), seeds, start.device)
    norms = {seed: run[1]["norms"] for seed, run in zip(seeds, runs)}  # the only examples that differ by seed
    examples = runs[-1][1]  # notes and SGD trajectories are the same for every seed: the last seed's

    make_plots(args.results_dir, examples, norms[seeds[0]])
    mean = no_dataset.write_result(
        EXPERIMENT, args, start, seeds, runs, eval_s, notes="no dataset is read: toy tensors and functions only",
        headline="momentum.m09.final_x",
        history={"lr_trajectories": examples["lr_traj"], "momentum_trajectories": examples["mom_traj"],
                 "grad_norms_per_layer": {str(s): n for s, n in norms.items()}},
        script=__file__, extra=extra_record(examples["notes"], start.device), deviations=DEVIATIONS)
    report(mean, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
