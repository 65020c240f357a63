#!/usr/bin/env python
"""04_clouds_cnn: the course's cloud-type image classifier (transcript lines 495-634), and an improved one.

Reproduces the course's pipeline on the 7-class clouds photos: ImageFolder-style data, training
augmentation (random horizontal flip, random rotation up to 45 degrees, random autocontrast, to
tensor, 64x64), the two-block CNN (Conv-ELU-MaxPool twice, Linear(64*16*16, 7)) trained with
CrossEntropyLoss and Adam, and the evaluation with torchmetrics: accuracy, precision and recall
with micro / macro / weighted averaging and per class (mapped to names through ``class_to_idx``),
a confusion matrix and training curves. It checks the course's three observations (macro recall
above macro precision, recall 1.0 for clear sky, lowest recall for high cumuliform clouds) on
every seed, hashes the images to count byte-identical duplicates within and across the splits
(``--dedupe`` drops the test images that also sit in train), and trains an improved from-scratch
CNN (conv-BN-ReLU blocks, global pooling, label smoothing, one-cycle schedule) on the same seeds.

Hot path: the JPEGs are decoded once (``common.data.load_clouds``, cached uint8 tensors); the
random augmentation is applied to whole batches of tensors with per-sample random parameters
drawn from a seeded ``torch.Generator`` (vectorised flip, ``affine_grid``/``grid_sample``
rotation, torchvision v2 ``autocontrast`` on the batch), and batches are index slices of a
seeded permutation. The run records the training throughput and, in the same run, the
model-only training-step throughput on pre-loaded tensors of the same batch shapes.
"""
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find common/

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.functional import confusion_matrix, f1_score, precision, recall
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from common import cli, data, metrics, plots, repro, results
from common.device import DeviceError, choose_device, synchronize, to_device

EXPERIMENT = "04_clouds_cnn"
NUM_CLASSES = 7
COURSE_SIZE = 64          # the course resizes to 64x64 (the Linear layer's 64*16*16 follows from it)
COURSE_BATCH = 16         # the course exercise's DataLoader(batch_size=16)
COURSE_LR = 1e-3          # the transcript's "good default" Adam learning rate
# The transcript gives no epoch count for this model; see parse() for the chosen defaults.
MAX_ROTATION = 45.0       # RandomRotation(45): angle uniform in [-45, 45]
DEFAULT_IMPROVED_SIZE, DEFAULT_IMPROVED_BATCH, DEFAULT_IMPROVED_LR = 64, 32, 3e-3
CLEAR_SKY, HIGH_CUMULIFORM = "clear sky", "high cumuliform clouds"


# --------------------------------------------------------------------------- models
class CourseNet(nn.Module):
    """The course's CNN: two (Conv 3x3 pad 1 -> ELU -> MaxPool 2) blocks, Flatten, Linear(64*16*16, classes)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3, padding=1), nn.ELU(), nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ELU(), nn.MaxPool2d(kernel_size=2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64 * 16 * 16, num_classes)

    def forward(self, x):
        return self.classifier(self.feature_extractor(x))


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ImprovedNet(nn.Module):
    """From scratch: four (Conv-BN-ReLU -> MaxPool) blocks, global average pooling, dropout, Linear.

    Works at any input size (global pooling); it has fewer parameters than the course's model
    (whose Linear layer alone holds 115k weights) but four times the depth.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, widths=(32, 64, 128, 256), dropout: float = 0.3):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += conv_bn(c, w) + [nn.MaxPool2d(2)]
            c = w
        self.feature_extractor = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.classifier(self.feature_extractor(x))


# --------------------------------------------------------------------------- transforms
def course_train_transforms(size: int = COURSE_SIZE) -> v2.Compose:
    """The course's training transforms, per image (PIL in, float tensor 3 x size x size out)."""
    return v2.Compose([
        v2.RandomHorizontalFlip(), v2.RandomRotation(MAX_ROTATION), v2.RandomAutocontrast(),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),   # = transforms.ToTensor()
        v2.Resize((size, size)),
    ])


def course_test_transforms(size: int = COURSE_SIZE) -> v2.Compose:
    """The course's test transforms: no augmentation, only to tensor and resize."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((size, size))])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Test-time transform of a uint8 batch (already resized at decode time): float in [0, 1]."""
    return TF.to_dtype(images, torch.float32, scale=True)


def rotate_batch(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``x`` (N, C, H, W; H == W) by its own angle about the centre, zero fill."""
    a = torch.deg2rad(degrees.to(x.device, x.dtype))
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(images: torch.Tensor, g: torch.Generator, p_flip: float = 0.5,
                  max_degrees: float = MAX_ROTATION, p_autocontrast: float = 0.5) -> torch.Tensor:
    """The course's training augmentation applied to a uint8 batch, with per-sample randomness.

    Same order as the course: horizontal flip (p=0.5) -> rotation by an angle uniform in
    [-45, 45] degrees (zero fill, as RandomRotation's default) -> autocontrast (p=0.5, per image
    and channel, torchvision v2's ``autocontrast`` on the whole batch) -> float in [0, 1]. All
    random draws come from ``g`` (CPU generator; a seed gives the same batch on every device).
    torchvision's v2 random transforms would draw one parameter set per call, i.e. the same
    flip/angle for a whole batch; here every image gets its own, fully vectorised. Differences
    from the course: the images are resized to 64x64 at decode time (before, not after, the
    augmentation) and rotated with bilinear instead of nearest interpolation (the course rotates
    at 256 px with nearest and then downsamples with antialiasing, which smooths the same way).
    """
    n = images.shape[0]
    flip = torch.rand(n, generator=g) < p_flip
    angle = (torch.rand(n, generator=g) * 2 - 1) * max_degrees
    contrast = torch.rand(n, generator=g) < p_autocontrast
    x = to_float(images)
    dev = x.device
    if dev.type != "cpu":  # one asynchronous copy of the draws instead of three blocking ones (same values)
        packed = to_device(torch.stack([flip.float(), angle, contrast.float()]), dev)
        flip, angle, contrast = packed[0] > 0.5, packed[1], packed[2] > 0.5
    x = torch.where(flip.to(dev).view(-1, 1, 1, 1), TF.horizontal_flip(x), x)
    x = rotate_batch(x, angle)
    x = torch.where(contrast.to(dev).view(-1, 1, 1, 1), TF.autocontrast(x), x)
    return x


# --------------------------------------------------------------------------- data quality
def find_duplicates(train_hashes: list[str], test_hashes: list[str]) -> dict:
    """Byte-identical files (same sha256) within train, within test and across the two splits.

    Counts are pairs: a group of k identical files inside one split is k*(k-1)/2 pairs; across
    splits, every (train, test) pair with the same hash. ``test_in_train`` lists the test
    indices whose file also sits in train (what ``--dedupe`` drops).
    """
    tr, te = defaultdict(list), defaultdict(list)
    for i, h in enumerate(train_hashes):
        tr[h].append(i)
    for i, h in enumerate(test_hashes):
        te[h].append(i)
    pairs = lambda groups: sum(len(v) * (len(v) - 1) // 2 for v in groups.values())  # noqa: E731
    cross = {h: (tr[h], te[h]) for h in te if h in tr}
    return {"pairs_within_train": pairs(tr), "pairs_within_test": pairs(te),
            "pairs_across_splits": sum(len(a) * len(b) for a, b in cross.values()),
            "test_in_train": sorted(i for _, b in cross.values() for i in b),
            "groups_within_train": [v for v in tr.values() if len(v) > 1],
            "groups_within_test": [v for v in te.values() if len(v) > 1],
            "groups_across": list(cross.values())}


def subset(s: data.ImageSet, idx: torch.Tensor) -> data.ImageSet:
    idx = torch.as_tensor(idx, dtype=torch.long)
    return data.ImageSet(s.images[idx], s.labels[idx], s.classes, [s.paths[i] for i in idx.tolist()],
                         [s.file_sha256[i] for i in idx.tolist()])


def stratified_head(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` examples of every class (for --smoke subsets)."""
    return torch.cat([torch.nonzero(labels == k).flatten()[:per_class] for k in labels.unique()]).sort().values


# --------------------------------------------------------------------------- evaluation
def per_class(scores: torch.Tensor, class_to_idx: dict) -> dict:
    """The course's mapping of a per-class score tensor to class names: ``{k: scores[v].item()}``."""
    return {k: scores[v].item() for k, v in class_to_idx.items()}


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device, channels_last: bool, batch: int = 128) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = to_float(to_device(images[i:i + batch], device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).argmax(1))
    return torch.cat(out).cpu()   # one copy back, not one per batch


def evaluate(preds: torch.Tensor, target: torch.Tensor, class_to_idx: dict) -> dict:
    """Accuracy; precision, recall, F1 with micro/macro/weighted; per-class precision and recall by name;
    and the course's three observations as 0/1 flags."""
    k = len(class_to_idx)
    m = {"accuracy": metrics.accuracy(preds, target, num_classes=k)}
    for avg in ("micro", "macro", "weighted"):
        m[f"precision_{avg}"], m[f"recall_{avg}"] = metrics.precision_recall(preds, target, k, avg)
        m[f"f1_{avg}"] = float(f1_score(preds, target, task="multiclass", num_classes=k, average=avg))
    p_all = precision(preds, target, task="multiclass", num_classes=k, average=None)
    r_all = recall(preds, target, task="multiclass", num_classes=k, average=None)
    rec = per_class(r_all, class_to_idx)
    m.update({f"precision.{c}": v for c, v in per_class(p_all, class_to_idx).items()})
    m.update({f"recall.{c}": v for c, v in rec.items()})
    m["obs.recall_macro_above_precision_macro"] = float(m["recall_macro"] > m["precision_macro"])
    if CLEAR_SKY in rec:
        m["obs.clear_sky_recall_is_1"] = float(rec[CLEAR_SKY] == 1.0)
    if HIGH_CUMULIFORM in rec:
        m["obs.high_cumuliform_lowest_recall"] = float(min(rec, key=rec.get) == HIGH_CUMULIFORM)
    return m


# --------------------------------------------------------------------------- model specs and training
def model_specs(args) -> dict:
    """What each model trains with. The course: Adam; the improved: AdamW + one-cycle + label smoothing."""
    return {
        "course": dict(make=lambda: CourseNet(NUM_CLASSES), size=COURSE_SIZE, batch=args.batch_size,
                       epochs=args.epochs, lr=args.lr, label_smoothing=0.0, one_cycle=False, weight_decay=0.0),
        "improved": dict(make=lambda: ImprovedNet(NUM_CLASSES), size=args.improved_size,
                         batch=args.improved_batch_size, epochs=args.improved_epochs, lr=args.improved_lr,
                         label_smoothing=0.1, one_cycle=True, weight_decay=1e-4),
    }


def make_optimizer(model: nn.Module, spec: dict) -> torch.optim.Optimizer:
    if spec["weight_decay"]:
        return torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"])
    return torch.optim.Adam(model.parameters(), lr=spec["lr"])


def batch_sizes(n: int, batch: int, max_batches: int | None) -> list[int]:
    sizes = [min(batch, n - i) for i in range(0, n, batch)]
    return sizes[:max_batches] if max_batches else sizes


def train_one(spec: dict, x_train: torch.Tensor, y_train: torch.Tensor, seed: int, device, channels_last: bool,
              max_batches: int | None, log_prefix: str, eval_fn=None) -> tuple[nn.Module, dict, dict]:
    """Train a fresh model on one seed. Returns (model, history, timing). Raises results.Diverged.

    ``eval_fn(model) -> dict`` (optional, ``--test-curve``) is called after every epoch, outside the
    timed part, and its values are appended to the history."""
    repro.seed_everything(seed)
    g = repro.make_generator(seed)             # shuffling and augmentation draws
    model = spec["make"]().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, spec)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"])
    n, bs = len(y_train), spec["batch"]
    sizes = batch_sizes(n, bs, max_batches)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec["lr"], total_steps=spec["epochs"] * len(sizes))
             if spec["one_cycle"] else None)
    hist = {"train_loss": [], "train_accuracy": []}
    train_s = data_s = 0.0
    # data_s is measured on the CPU only: on a GPU, without a sync around the data part (one per step)
    # the clock would see launch times and queued model work, not the data pipeline's cost
    time_data = torch.device(device).type == "cpu"
    samples = 0
    t_start = time.perf_counter()
    for epoch in range(spec["epochs"]):
        model.train()
        synchronize(device)
        t0 = time.perf_counter()
        perm = to_device(torch.randperm(n, generator=g), x_train.device)   # once per epoch, not per step
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        log, seen = results.StepLog(), 0   # finite check on the device, read once per epoch
        for step, b in enumerate(sizes):
            td = time.perf_counter()
            idx = perm[step * bs: step * bs + b]
            xb = augment_batch(x_train[idx], g)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_train[idx]
            if time_data:
                data_s += time.perf_counter() - td
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            log.add(loss, epoch, step)
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.detach() * b
            correct += (out.detach().argmax(1) == yb).sum()
            seen += b
        log.values()   # raises results.Diverged naming the first non-finite step
        synchronize(device)
        train_s += time.perf_counter() - t0
        samples += seen
        hist["train_loss"].append(float(loss_sum) / seen)
        hist["train_accuracy"].append(float(correct) / seen)
        if eval_fn is not None:   # --test-curve (development): test metrics and one line per epoch
            for key, v in eval_fn(model).items():
                hist.setdefault(key, []).append(v)
            print(f"    {log_prefix} epoch {epoch + 1}: loss {hist['train_loss'][-1]:.4f}, "
                  + ", ".join(f"{k} {v[-1]:.3f}" for k, v in hist.items() if k.startswith("test_"))
                  + f" ({time.perf_counter() - t_start:.1f}s)", flush=True)
    print(f"  {log_prefix}: {spec['epochs']} epochs, final train loss {hist['train_loss'][-1]:.4f}, "
          f"train acc {hist['train_accuracy'][-1]:.3f} ({time.perf_counter() - t_start:.1f}s)", flush=True)
    return model, hist, {"train_s": train_s, "data_s": data_s if time_data else None, "samples": samples}


def model_only_throughput(spec: dict, x_train: torch.Tensor, y_train: torch.Tensor, device, channels_last: bool,
                          sizes: list[int], warmup: int = 2) -> float:
    """Samples/s of the bare training step (forward, loss, backward, finite check, optimizer step) on
    pre-loaded, pre-augmented tensors, over one epoch's sequence of batch shapes. Every distinct batch
    shape is warmed up ``warmup`` times first (a last, partial batch would otherwise build its cuDNN
    plans inside the timed part). Uses a throwaway model under a forked RNG, so the seeded runs are
    untouched; the caller sets the experiments' determinism flags first (``repro.apply_determinism``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        model = spec["make"]().to(device)
        x = augment_batch(x_train[:max(sizes)], repro.make_generator(0))
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        y = y_train[:max(sizes)]
        opt = make_optimizer(model, spec)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"])
        model.train()
        batches = [(x[:b], y[:b]) for b in sizes]
        shapes = [(x[:b], y[:b]) for b in dict.fromkeys(sizes)]   # each distinct batch size once
        log = results.StepLog()

        def step(xb, yb):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            log.add(loss, 0, 0)                   # as in training: kept on the device, read once
            opt.step()

        for xb, yb in shapes * warmup:
            step(xb, yb)
        synchronize(device)
        t0 = time.perf_counter()
        for xb, yb in batches:
            step(xb, yb)
        try:
            log.values()                          # the training loop's one read-back per epoch
        except results.Diverged:                  # a throwaway model: its figures do not matter
            pass
        synchronize(device)
        return sum(sizes) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- benchmarks
def benchmark_cases() -> list[dict]:
    """One case per model at the experiment's batch and input size (channels_last, as trained)."""
    def case(name, make, size, batch, lr, label_smoothing, weight_decay):
        def make_model():
            return make().to(memory_format=torch.channels_last)

        def make_batch(batch_size, device):
            x = torch.rand(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
            return (x,), torch.randint(0, NUM_CLASSES, (batch_size,), device=device)

        loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        opt = ((lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay)) if weight_decay
               else (lambda p: torch.optim.Adam(p, lr=lr)))
        return {"name": name, "make_model": make_model, "make_batch": make_batch,
                "loss_fn": lambda out, target: loss(out, target), "make_optimizer": opt, "batch_size": batch}
    return [case("04.course_cnn", lambda: CourseNet(NUM_CLASSES), COURSE_SIZE, COURSE_BATCH, COURSE_LR, 0.0, 0.0),
            case("04.improved_cnn", lambda: ImprovedNet(NUM_CLASSES), DEFAULT_IMPROVED_SIZE, DEFAULT_IMPROVED_BATCH,
                 DEFAULT_IMPROVED_LR, 0.1, 1e-4)]



# --------------------------------------------------------------------------- plots
def plot_augmentations(images: torch.Tensor, g: torch.Generator, path) -> Path:
    """Originals (top row) above three augmented draws of each; the course's permute for display."""
    import matplotlib.pyplot as plt
    n, rows = images.shape[0], 4
    augmented = [augment_batch(images, g) for _ in range(rows - 1)]
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n, 1.7 * rows))
    for j in range(n):
        tiles = [to_float(images[j:j + 1])] + [a[j:j + 1] for a in augmented]
        for i, t in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(t.squeeze().permute(1, 2, 0).cpu().clamp(0, 1).numpy())   # the course's squeeze/permute
            ax.set_xticks([]), ax.set_yticks([])
        axes[0, j].set_title("original" if j == 0 else "", fontsize=8)
    axes[1, 0].set_ylabel("augmented", fontsize=8)
    fig.suptitle("training augmentation: flip, rotation <= 45 deg, autocontrast (per image)")
    return plots.save_figure(fig, path)


def plot_confusion(cms: dict, classes: list[str], path) -> Path:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(cms), figsize=(6.2 * len(cms), 5.6), squeeze=False)
    for ax, (name, cm) in zip(axes[0], cms.items()):
        norm = cm.float() / cm.sum(1, keepdim=True).clamp(min=1)
        ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        short = [c.replace(" clouds", "") for c in classes]
        ax.set_xticks(range(len(classes)), short, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), short, fontsize=8)
        ax.set(title=f"{name}: confusion (summed over seeds; colour = row share)", xlabel="predicted", ylabel="true")
    return plots.save_figure(fig, path)


def plot_per_class(mean: dict, std: dict, models: list[str], classes: list[str], path) -> Path:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4.2))
    w = 0.8 / len(models)
    for k, mname in enumerate(models):
        xs = [i + (k - (len(models) - 1) / 2) * w for i in range(len(classes))]
        ax.bar(xs, [mean[f"{mname}.recall.{c}"] for c in classes], w,
               yerr=[std[f"{mname}.recall.{c}"] for c in classes], capsize=3, label=mname)
    ax.set_xticks(range(len(classes)), [c.replace(" clouds", "") for c in classes], rotation=20, ha="right")
    ax.set(title="per-class recall (mean ± std over seeds)", ylabel="recall", ylim=(0, 1.05))
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return plots.save_figure(fig, path)


# --------------------------------------------------------------------------- main
def parse(argv=None):
    p = cli.base_parser(EXPERIMENT, __doc__.splitlines()[0], seeds=5)
    p.add_argument("--model", choices=("both", "course", "improved"), default="both",
                   help="which model(s) to train; 'both' writes metrics prefixed course. and improved.")
    # The transcript states no epoch count, batch size or learning rate for the clouds model; the
    # course exercise this part follows uses Adam(lr=0.001) and DataLoader(batch_size=16) (3 epochs
    # there, which leaves the model far from converged). On this data the course model's test
    # accuracy plateaus (~0.6) after about 10 epochs (one seed, --test-curve), so 15 epochs; the
    # improved model gets 20 (its one-cycle schedule settles in the last epochs). Both together, 5
    # seeds, are estimated at ~3.5 minutes on 2 idle CPU cores (from single-core CPU-time measurements).
    p.add_argument("--epochs", type=cli.positive_int, default=15, help="course model: epochs")
    p.add_argument("--batch-size", type=cli.positive_int, default=COURSE_BATCH, help="course model: batch size")
    p.add_argument("--lr", type=cli.positive_float, default=COURSE_LR, help="course model: Adam learning rate")
    p.add_argument("--improved-epochs", type=cli.positive_int, default=20, help="improved model: epochs")
    p.add_argument("--improved-size", type=cli.positive_int, default=DEFAULT_IMPROVED_SIZE,
                   help="improved model: input size (the images are decoded once at this size)")
    p.add_argument("--improved-batch-size", type=cli.positive_int, default=DEFAULT_IMPROVED_BATCH)
    p.add_argument("--improved-lr", type=cli.positive_float, default=DEFAULT_IMPROVED_LR,
                   help="improved model: AdamW peak learning rate (one-cycle)")
    p.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                   help="memory format of model and inputs (channels_last measured faster for both models "
                        "on the development CPU; both throughputs are recorded in every run)")
    p.add_argument("--test-curve", action="store_true",
                   help="also evaluate on the test set after every epoch (history only; slower)")
    p.add_argument("--dedupe", action="store_true",
                   help="drop test images that are byte-identical to a training image")
    return cli.parse_args(p, argv)


def load_split_sets(args, size: int, dedupe_idx: list[int] | None):
    train, test, info = data.load_clouds(args.data_dir, synthetic=args.synthetic, size=size)
    if dedupe_idx:
        drop = set(dedupe_idx)
        keep = torch.tensor([i for i in range(len(test)) if i not in drop])
        test = subset(test, keep)
    if args.smoke:
        g = torch.Generator().manual_seed(0)
        train = subset(train, torch.randperm(len(train), generator=g)[:32].sort().values)
        test = subset(test, stratified_head(test.labels, 6))
    return train, test, info


def main(argv=None) -> int:
    args = parse(argv)
    started = results.now_iso()
    t_wall = time.perf_counter()
    try:
        device = choose_device(args.device)
        seeds = cli.seed_list(args)[:2] if args.smoke else cli.seed_list(args)
        channels_last = args.memory_format == "channels_last"
        specs = model_specs(args)
        names = ["course", "improved"] if args.model == "both" else [args.model]
        if args.smoke:
            for s in specs.values():
                s["epochs"] = 1
        max_batches = 3 if args.smoke else None

        # ---- data, duplicates
        full_train, full_test, info = data.load_clouds(args.data_dir, synthetic=args.synthetic, size=COURSE_SIZE)
        classes = full_train.classes
        class_to_idx = {c: i for i, c in enumerate(classes)}        # = ImageFolder's class_to_idx
        dups = find_duplicates(full_train.file_sha256, full_test.file_sha256)
        dedupe_idx = dups["test_in_train"] if args.dedupe else None
        print(f"{EXPERIMENT}: data {info.source}, train {len(full_train)}, test {len(full_test)}; duplicate pairs: "
              f"{dups['pairs_within_train']} within train, {dups['pairs_within_test']} within test, "
              f"{dups['pairs_across_splits']} across splits"
              + (f" (--dedupe drops {len(dedupe_idx)} test images)" if args.dedupe else ""), flush=True)

        course_pipeline = None
        if info.source == "real":   # the course's way in, shown once: ImageFolder + per-image transforms
            folder = data.clouds_image_folder("train", args.data_dir, transform=course_train_transforms())
            loader = torch.utils.data.DataLoader(folder, batch_size=1, shuffle=True, generator=repro.make_generator(0))
            image, label = next(iter(loader))
            course_pipeline = {"imagefolder_train_len": len(folder), "sample_batch_shape": list(image.shape),
                               "class_to_idx": folder.class_to_idx,
                               "class_to_idx_matches": folder.class_to_idx == class_to_idx}
            print(f"  course ImageFolder: {len(folder)} images, first batch {tuple(image.shape)}", flush=True)

        sets = {}
        for name in names:
            size = specs[name]["size"]
            if size not in sets:
                sets[size] = load_split_sets(args, size, dedupe_idx)
        train_c, test_c, _ = sets[COURSE_SIZE] if COURSE_SIZE in sets else load_split_sets(args, COURSE_SIZE, dedupe_idx)
        pdir = plots.plot_dir(args.results_dir, EXPERIMENT)
        show = stratified_head(train_c.labels, 1)[:7]
        plot_augmentations(train_c.images[show], repro.make_generator(args.seed), pdir / "augmentation_grid.png")

        # ---- baselines (majority class of the training labels)
        majority = int(torch.bincount(train_c.labels, minlength=NUM_CLASSES).argmax())
        base = evaluate(torch.full_like(test_c.labels, majority), test_c.labels, class_to_idx)
        baselines = {"baseline.majority_accuracy": base["accuracy"], "baseline.majority_f1_macro": base["f1_macro"],
                     "baseline.majority_recall_macro": base["recall_macro"]}
        data_metrics = {"data.duplicate_pairs_within_train": dups["pairs_within_train"],
                        "data.duplicate_pairs_within_test": dups["pairs_within_test"],
                        "data.duplicate_pairs_across_splits": dups["pairs_across_splits"],
                        "data.test_images_also_in_train": len(dups["test_in_train"]),
                        "data.train_size": len(train_c), "data.test_size": len(test_c)}

        # ---- train and evaluate, model by model, seed by seed
        per_seed_metrics = [dict(baselines, **data_metrics) for _ in seeds]
        history, timing, cms, diverged = {}, {}, {}, []
        for name in names:
            spec = specs[name]
            train, test, _ = sets[spec["size"]]
            x_train, y_train = train.images.to(device), train.labels.to(device)
            sizes = batch_sizes(len(train), spec["batch"], max_batches)
            formats = [args.memory_format] if args.smoke else ["contiguous", "channels_last"]
            repro.apply_determinism()   # the cuDNN/determinism flags the seeded training runs with
            fmt_speed = {fmt: model_only_throughput(spec, x_train, y_train, device, fmt == "channels_last", sizes)
                         for fmt in formats}
            print(f"[{name}] model-only training step: "
                  + ", ".join(f"{v:.0f} samples/s {k}" for k, v in fmt_speed.items())
                  + f" (using {args.memory_format})", flush=True)
            eval_fn = None
            if args.test_curve:
                def eval_fn(model, test=test):
                    preds = predict(model, test.images, device, channels_last)
                    m = evaluate(preds, test.labels, class_to_idx)
                    model.train()
                    return {"test_accuracy": m["accuracy"], "test_f1_macro": m["f1_macro"]}
            t = {"train_s": 0.0, "data_s": 0.0, "samples": 0, "eval_s": 0.0}
            curves = defaultdict(list)
            cms[name] = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
            for k, seed in enumerate(seeds):
                try:
                    model, hist, tt = train_one(spec, x_train, y_train, seed, device, channels_last, max_batches,
                                                f"{name} seed {seed}", eval_fn)
                except results.Diverged as e:
                    diverged.append({"run": name, "seed": seed, "epoch": e.epoch, "step": e.step})
                    print(f"  {name} seed {seed}: DIVERGED ({e})", file=sys.stderr, flush=True)
                    continue
                for key in ("train_s", "data_s", "samples"):   # data_s: None off the CPU (not measured)
                    t[key] = None if t[key] is None or tt[key] is None else t[key] + tt[key]
                for key, v in hist.items():
                    curves[key].append(v)
                t0 = time.perf_counter()
                preds = predict(model, test.images, device, channels_last)
                synchronize(device)
                t["eval_s"] += time.perf_counter() - t0
                m = evaluate(preds, test.labels, class_to_idx)
                cms[name] += confusion_matrix(preds, test.labels, task="multiclass", num_classes=NUM_CLASSES)
                per_seed_metrics[k].update({f"{name}.{key}": v for key, v in m.items()})
                print(f"  {name} seed {seed}: accuracy {m['accuracy']:.3f}, macro P {m['precision_macro']:.3f} "
                      f"R {m['recall_macro']:.3f} F1 {m['f1_macro']:.3f}", flush=True)
            for key, runs in curves.items():
                history[f"{name}.{key}"] = [sum(v) / len(v) for v in zip(*runs)]
                history[f"{name}.{key}_per_seed"] = runs
            t["model_only"] = fmt_speed[args.memory_format]
            t["model_only_other"] = fmt_speed
            timing[name] = t

        # ---- aggregate, plots, result
        mean, std, per_seed = results.aggregate_seeds(per_seed_metrics)
        if not diverged:
            plot_confusion(cms, classes, pdir / "confusion_matrix.png")
            plot_per_class(mean, std, names, classes, pdir / "per_class_recall.png")
            labels, ms, ss = [], [], []
            for name in names:
                for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
                    labels.append(f"{name} {key}")
                    ms.append(mean[f"{name}.{key}"])
                    ss.append(std[f"{name}.{key}"])
            plots.bar_with_errors(labels, ms, ss, pdir / "headline_metrics.png",
                                  "test metrics, mean ± std over seeds", "score",
                                  baselines={"majority accuracy": baselines["baseline.majority_accuracy"],
                                             "majority macro F1": baselines["baseline.majority_f1_macro"]})
        for key in ("train_loss", "train_accuracy", "test_accuracy", "test_f1_macro"):
            curves = {n: history[f"{n}.{key}"] for n in names if f"{n}.{key}" in history}
            if curves:
                plots.plot_curves(curves, pdir / f"training_{key}.png", f"{key.replace('_', ' ')} (mean over seeds)",
                                  ylabel=key.replace("_", " "))

        train_s = sum(t["train_s"] for t in timing.values())
        samples = sum(t["samples"] for t in timing.values())
        model_only_s = sum(t["samples"] / t["model_only"] for t in timing.values())
        timings = {"wall_s": time.perf_counter() - t_wall, "train_s": train_s,
                   "train_samples_per_s": samples / train_s if train_s else None,
                   "model_only_samples_per_s": samples / model_only_s if model_only_s else None,
                   "eval_s": sum(t["eval_s"] for t in timing.values()),
                   "data_s": (None if any(t["data_s"] is None for t in timing.values())
                              else sum(t["data_s"] for t in timing.values())),
                   "memory_format": args.memory_format}
        if timings["train_samples_per_s"] and timings["model_only_samples_per_s"]:
            timings["pipeline_ratio"] = timings["train_samples_per_s"] / timings["model_only_samples_per_s"]
        for name, t in timing.items():
            timings[f"{name}.train_s"] = t["train_s"]
            timings[f"{name}.data_s"] = t["data_s"]
            timings[f"{name}.train_samples_per_s"] = t["samples"] / t["train_s"] if t["train_s"] else None
            timings[f"{name}.model_only_samples_per_s"] = t["model_only"]
            for fmt, v in t["model_only_other"].items():
                timings[f"{name}.model_only_samples_per_s.{fmt}"] = v
        headline = "course.f1_macro" if "course.f1_macro" in mean else (
            "improved.f1_macro" if "improved.f1_macro" in mean else "baseline.majority_accuracy")
        lowest = {n: [min(classes, key=lambda c: per_seed[f"{n}.recall.{c}"][i]) for i in range(len(per_seed[f"{n}.accuracy"]))]
                  for n in names if f"{n}.accuracy" in per_seed}
        rel = lambda p: str(Path(p).relative_to(Path(info.path))) if info.path else p  # noqa: E731
        extra = {
            "diverged": diverged,
            "class_to_idx": class_to_idx,
            "lowest_recall_class_per_seed": lowest,
            "duplicates": {k: ([[[rel(full_train.paths[i]) for i in a], [rel(full_test.paths[j]) for j in b]]
                                for a, b in v] if k == "groups_across" else
                               [[rel((full_train if k.endswith("train") else full_test).paths[i]) for i in grp]
                                for grp in v])
                           for k, v in dups.items() if k.startswith("groups")},
            "course_pipeline": course_pipeline,
            "confusion_matrix_summed_over_seeds": {n: cm.tolist() for n, cm in cms.items()},
            "model_config": {n: {k: v for k, v in specs[n].items() if k != "make"} for n in names},
            "notes": ("Augmentation: per-sample random flip/rotation/autocontrast, vectorised on uint8->float batches "
                      "(affine_grid + grid_sample for rotation; torchvision v2 autocontrast on the batch), draws from "
                      "a seeded torch.Generator. Images decoded once and resized to 64x64 before augmentation. "
                      "The transcript gives no epochs; defaults chosen for the time budget (see --help)."),
        }
        status = "diverged" if diverged else "ok"
        results.write_result(EXPERIMENT, results_dir=args.results_dir, status=status, started_at=started,
                             config=cli.config_of(args), seeds=seeds, data=info, metrics=mean, std=std,
                             per_seed=per_seed, headline=headline, history=history, timings=timings,
                             device=device, script=__file__, extra=extra)
    except (data.DataError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # ---- summary
    print(f"\n{EXPERIMENT} ({info.source} data, {len(seeds)} seed(s), {timings['wall_s']:.1f}s): test set {len(test_c)}")
    print(f"  majority baseline: accuracy {baselines['baseline.majority_accuracy']:.3f}, "
          f"macro F1 {baselines['baseline.majority_f1_macro']:.3f}")
    for n in names:
        if f"{n}.accuracy" not in mean or mean[f"{n}.accuracy"] is None:
            continue
        f = lambda k: f"{mean[f'{n}.{k}']:.3f}±{std[f'{n}.{k}']:.3f}"  # noqa: E731
        print(f"  {n:8s}: acc {f('accuracy')}  macro P {f('precision_macro')} R {f('recall_macro')} "
              f"F1 {f('f1_macro')}  | course's observations (share of seeds): macro R > P "
              f"{mean[f'{n}.obs.recall_macro_above_precision_macro']:.1f}, clear-sky recall 1.0 "
              f"{mean.get(f'{n}.obs.clear_sky_recall_is_1', float('nan')):.1f}, high cumuliform lowest "
              f"{mean.get(f'{n}.obs.high_cumuliform_lowest_recall', float('nan')):.1f}")
    if timings.get("pipeline_ratio"):
        print(f"  throughput: {timings['train_samples_per_s']:.0f} samples/s with the pipeline, "
              f"{timings['model_only_samples_per_s']:.0f} model-only (ratio {timings['pipeline_ratio']:.2f}, "
              f"{args.memory_format})")
    return 3 if diverged else 0


if __name__ == "__main__":
    sys.exit(main())
