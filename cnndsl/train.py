"""`cnndsl train`: config, data, model, optimiser, one loop — read it top to bottom.

nanoGPT's train.py is the model: one visible sequence of plain stages, with the
practice each line follows cited beside it. The practices are the lecture notes'
("Training: best practices": mini-batch SGD, centre your data, Xavier
initialisation, dropout, data augmentation; transfer learning) plus the usual
modern ones (Adam/AdamW, weight decay, warm-up, step / cosine / one-cycle
schedules, label smoothing, bf16 autocast and channels_last on GPUs, DDP).

Reproducible by construction: everything random in epoch e (batch order,
augmentation, dropout) is seeded from (seed, e), so a run resumed from the
checkpoint of epoch k repeats the uninterrupted run exactly (bit for bit on CPU),
even when it was killed with kill -9 in the middle of epoch k + 1.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint
from .augment import build_augment, tta_views
from .compile import INIT_SCHEMES, build_module
from .data import channel_stats, load_data
from .errors import CnnDslError, Span, did_you_mean

# --- config ---------------------------------------------------------------------------
# Defaults, overridden by the spec's `train:` section, overridden by command-line flags.


@dataclass
class Config:
    # data
    data: str = "digits"            # a cnndsl.data source; scikit-learn's digits need no download
    val_fraction: float = 0.1       # training images held out to pick the best epoch (the notes:
                                    # "use cross-validation for your parameters")
    limit: int | None = None        # train on only the first N images: quick experiments and tests
    augment: dict = field(default_factory=dict)  # the notes' "create virtual training data":
                                    # hflip, crop, jitter, affine (see cnndsl/augment.py)
    # model
    init: str = "default"           # default (PyTorch's) | xavier (the notes: Var(W) = 1/n_in)
                                    # | kaiming (He et al. 2015: Var(W) = 2/n_in, for ReLU nets)
    init_from: str | None = None    # transfer learning (the notes): start from a checkpoint's
                                    # weights wherever names and shapes match
    freeze: str | None = None       # ... and keep layers up to this one fixed, fine-tuning the rest
                                    # (batch-norm statistics there still follow the new data)
    strict: bool = False            # a layer that does not fit its input is an error (analyze --strict)
    # optimisation
    epochs: int = 10
    batch_size: int = 64            # mini-batch SGD (the notes); global, split over DDP processes
    optimizer: str = "sgd"          # sgd with momentum | adam (Kingma & Ba 2015)
                                    # | adamw (decoupled weight decay, Loshchilov & Hutter 2019)
    lr: float | None = None         # peak learning rate; None: 0.01 for SGD, 0.001 for Adam(W)
    momentum: float = 0.9           # SGD's momentum (Sutskever et al. 2013); Adam ignores it
    weight_decay: float = 0.0       # L2 regularisation (the notes: "use regularization")
    schedule: str = "cosine"        # none | step | cosine (Loshchilov & Hutter 2017)
                                    # | onecycle (Smith 2018); all move per iteration
    warmup_epochs: float = 0.0      # linear warm-up (Goyal et al. 2017); onecycle: its rise (default 30%)
    step_size: int | None = None    # step schedule: epochs between decays; None: a third of the run
    gamma: float = 0.1              # step schedule: the factor of each decay (the ResNet paper's ÷10)
    label_smoothing: float = 0.0    # Szegedy et al. 2016, "Rethinking the Inception architecture", §7
    seed: int = 0                   # every random choice: init, split, batch order, augmentation, dropout
    # hardware
    device: str = "auto"            # auto: CUDA when available, else CPU
    bf16: bool = True               # on CUDA: autocast to bfloat16 (fp32's range: no loss scaling)
    channels_last: bool = True      # on CUDA: NHWC memory layout, what tensor-core convolutions want
    compile: bool = False           # torch.compile the model: faster steps after a slow first one


# Keys of a spec's `train:` section (dotted when nested) and the Config field each sets.
SPEC_KEYS = {
    "data": "data", "val_fraction": "val_fraction", "seed": "seed", "augment": "augment",
    "init": "init", "epochs": "epochs", "batch_size": "batch_size",
    "label_smoothing": "label_smoothing",
    "optimizer.name": "optimizer", "optimizer.lr": "lr", "optimizer.momentum": "momentum",
    "optimizer.weight_decay": "weight_decay",
    "schedule.name": "schedule", "schedule.warmup_epochs": "warmup_epochs",
    "schedule.step_size": "step_size", "schedule.gamma": "gamma",
}
NESTED = ("optimizer", "schedule")   # `optimizer: adam` is short for `optimizer: {name: adam}`
CHOICES = {"optimizer": ("sgd", "adam", "adamw"), "schedule": ("none", "step", "cosine", "onecycle"),
           "init": INIT_SCHEMES, "device": ("auto", "cpu", "cuda")}
# (type, lowest, highest, lowest allowed?) for the numbers; None: no bound.
NUMBERS = {
    "epochs": (int, 1, None, True), "batch_size": (int, 1, None, True),
    "step_size": (int, 1, None, True), "limit": (int, 1, None, True), "seed": (int, 0, None, True),
    "lr": (float, 0, None, False), "gamma": (float, 0, None, False),
    "weight_decay": (float, 0, None, True), "warmup_epochs": (float, 0, None, True),
    "momentum": (float, 0, 1, True), "label_smoothing": (float, 0, 1, True),
    "val_fraction": (float, 0, 1, True),
}


def make_config(spec, flags: dict | None = None, base: dict | None = None) -> Config:
    """Defaults ← the spec's `train:` section ← `flags` (Config field → value, None = not given).

    `base` (a resumed checkpoint's config) replaces defaults and spec together.
    """
    values = asdict(Config())
    if base is not None:
        values.update((k, v) for k, v in base.items() if k in values)
    else:
        for name, (value, span) in _spec_settings(spec).items():
            values[name] = _checked(name, value, span)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _checked(name, value, None)
    config = Config(**values)
    if config.lr is None:
        config.lr = 0.01 if config.optimizer == "sgd" else 1e-3
    return config


def _spec_settings(spec) -> dict:
    """The spec's `train:` section as {field: (value, span of its key)}."""
    settings = {}
    for key, value in spec.train.items():
        if key in NESTED and isinstance(value, dict):
            items = [(f"{key}.{sub}", v) for sub, v in value.items()]
        else:
            items = [(f"{key}.name" if key in NESTED else str(key), value)]
        for dotted, v in items:
            span = spec.train_spans.get(dotted) or spec.train_spans.get(str(key))
            if dotted not in SPEC_KEYS:
                raise CnnDslError(_unknown_key(dotted), span)
            settings[SPEC_KEYS[dotted]] = (v, span)
    return settings


def _unknown_key(dotted: str) -> str:
    hint = did_you_mean(dotted, SPEC_KEYS)
    nested = [k for k in SPEC_KEYS if k.endswith("." + dotted)]
    if not hint and nested:  # `lr:` at the top level: it goes under `optimizer:`
        hint = f" — did you mean '{nested[0]}' (`{dotted}` under `{nested[0].split('.')[0]}:`)?"
    return f"unknown train key '{dotted}'{hint}; valid: {', '.join(SPEC_KEYS)}"


def _checked(name: str, value, span: Span | None):
    """The value of one setting, checked (and converted: YAML reads `1e-3` as text)."""
    def bad(what: str):
        return CnnDslError(f"{name} must be {what}, got {value!r}", span)

    if name in CHOICES:
        if value not in CHOICES[name]:
            raise CnnDslError(f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}"
                              f"{did_you_mean(str(value), CHOICES[name])}", span)
        return value
    if name in NUMBERS:
        return _number(name, value, bad)
    if name == "augment":
        return _augment(value, span)
    if name in ("bf16", "channels_last", "compile", "strict"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if not isinstance(value, str) or not value:
        raise bad("text")
    return value


def _number(name: str, value, bad):
    kind, low, high, low_ok = NUMBERS[name]
    if value is None and name in ("step_size", "limit"):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad("a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad("a number")
    if kind is int:
        if not float(value).is_integer():
            raise bad("a whole number")
        value = int(value)
    too_low = value < low or (value == low and not low_ok)
    if too_low or (high is not None and value >= high):
        limits = f"{'≥' if low_ok else '>'} {low}" + (f" and < {high}" if high is not None else "")
        raise bad(f"a number {limits}")
    return kind(value)


def _augment(value, span):
    if value is None:
        return {}
    try:
        build_augment(value)
    except CnnDslError as e:
        raise CnnDslError(e.message, span) from None
    return dict(value)


# --- runtime: device, processes -------------------------------------------------------


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0                 # this process among `world` (torchrun's RANK / WORLD_SIZE)
    world: int = 1
    bf16: bool = False
    channels_last: bool = False

    @property
    def is_main(self) -> bool:   # only rank 0 prints and writes files
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the memory layout the model was put in."""
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)  # copy overlaps compute
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def start_runtime(config: Config) -> Runtime:
    """The device, and when launched by torchrun, the process group (DDP)."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise CnnDslError("--device cuda: no CUDA GPU is available (use --device auto or cpu)")
    use_cuda = config.device == "cuda" or (config.device == "auto" and cuda)
    world, rank, local = (int(os.environ.get(k, d)) for k, d in
                          (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True          # pick the fastest conv kernels per shape
        torch.backends.cuda.matmul.allow_tf32 = True   # fp32 leftovers of autocast use TF32
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    # bf16 needs Ampere or newer; older GPUs train in fp32.
    bf16 = use_cuda and config.bf16 and torch.cuda.is_bf16_supported()
    return Runtime(device, rank, world, bf16=bf16, channels_last=use_cuda and config.channels_last)


def stop_runtime(rt: Runtime) -> None:
    if rt.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A seed for one random stream of one epoch: resuming at epoch e needs only (seed, e)."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


# --- errors a run can stop with -------------------------------------------------------


class Diverged(CnnDslError):
    """The loss became NaN or infinite: stop, keeping the last good checkpoint."""


# --- the run --------------------------------------------------------------------------


@dataclass
class Run:
    """What one training run holds; `train()` fills it stage by stage."""

    spec: object
    config: Config
    out: Path
    rt: Runtime
    analysis: object = None
    data: object = None
    mean: torch.Tensor = None
    std: torch.Tensor = None
    augment: object = None
    model: torch.nn.Module = None        # what the steps call (maybe compiled, DDP-wrapped)
    raw_model: torch.nn.Module = None    # the GraphModule itself: what is saved and evaluated
    optimizer: torch.optim.Optimizer = None
    steps_per_epoch: int = 0
    epoch: int = 0                       # epochs completed
    best: dict | None = None
    elapsed: dict = field(default_factory=lambda: {"seconds": 0.0, "train_seconds": 0.0, "images": 0})
    report: "Reporter" = None


def train(spec, config: Config, out: str | Path, resume: dict | None = None) -> dict:
    """Train `spec` as `config` says, writing into `out`; `resume` is a checkpoint to continue.

    Returns the summary (also written to out/summary.json).
    """
    rt = start_runtime(config)
    run = Run(spec, config, Path(out), rt, report=Reporter(rt.is_main))
    try:
        return _train(run, resume)
    finally:
        run.report.close()
        stop_runtime(rt)


def _train(run: Run, resume: dict | None) -> dict:
    c, rt = run.config, run.rt
    torch.manual_seed(c.seed)
    if rt.is_main:
        run.out.mkdir(parents=True, exist_ok=True)

    # --- data -------------------------------------------------------------------------
    run.analysis = analysis = run.spec.analyze(strict=c.strict)
    analysis.raise_for_errors()
    run.data = data = load_data(c.data, analysis.input_shape, val_fraction=c.val_fraction,
                                seed=c.seed, limit=c.limit)
    _check_classes(analysis, data)
    # "Center (subtract mean from) your data" (the notes): per-channel mean and std of
    # the training images, applied after augmentation and saved with the model.
    run.mean, run.std = (channel_stats(data.train_x) if resume is None else
                         (resume["normalize"]["mean"], resume["normalize"]["std"]))
    run.augment = build_augment(c.augment)
    _place_data(run)

    # --- model ------------------------------------------------------------------------
    model = build_module(analysis.graph, run.spec.name, c.init)
    if c.init_from and resume is None:
        _init_from(model, c.init_from, run.report)
    frozen = freeze_layers(model, analysis, c.freeze)
    model.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.preserve_format)
    run.raw_model = run.model = model
    if c.compile:
        run.model = torch.compile(run.model)
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        run.model = DistributedDataParallel(run.model, device_ids=ids)   # all-reduces gradients

    # --- optimiser --------------------------------------------------------------------
    run.optimizer = make_optimizer(c, [p for p in model.parameters() if p.requires_grad])
    run.steps_per_epoch = len(epoch_batches(len(data.train_y), c.batch_size, rt.world))
    if resume is not None:
        _restore(run, resume)
    truncate_metrics(run.out / "metrics.jsonl", run.epoch, rt)
    _announce(run, frozen)

    # --- the loop: train an epoch, validate, log, checkpoint --------------------------
    for epoch in range(run.epoch, c.epochs):
        started = time.perf_counter()
        stats = train_epoch(run, epoch)
        val = evaluate(run.raw_model, data.val_x, data.val_y, rt, run.mean, run.std, c.batch_size)
        seconds = time.perf_counter() - started
        metrics = {"epoch": epoch + 1, "train_loss": stats["loss"], "train_acc": stats["acc"],
                   "val_loss": val["loss"], "val_acc": val["acc"], "lr": stats["lr"],
                   "seconds": round(seconds, 3),
                   "images_per_s": round(stats["images"] / stats["seconds"], 1)}
        run.elapsed = {"seconds": run.elapsed["seconds"] + seconds,
                       "train_seconds": run.elapsed["train_seconds"] + stats["seconds"],
                       "images": run.elapsed["images"] + stats["images"]}
        run.epoch = epoch + 1
        _end_epoch(run, metrics)

    # --- test -------------------------------------------------------------------------
    return _finish(run)


def _check_classes(analysis, data) -> None:
    shape, k = analysis.output_shape, data.num_classes
    if shape is None or len(shape) != 1 or shape[0] < k:
        out = "×".join(map(str, shape or ())) or "nothing"
        raise CnnDslError(f"the network's output is {out}, but '{data.name}' has {k} classes: "
                          f"end the net in FC-{k}", analysis.graph.nodes[analysis.output]["span"])


def _place_data(run: Run) -> None:
    """Keep a small data set on the GPU (no copy per step); else batches are copied pinned."""
    d, rt = run.data, run.rt
    run.mean = run.mean.to(rt.device).view(1, -1, 1, 1)
    run.std = run.std.to(rt.device).view(1, -1, 1, 1)
    if rt.device.type == "cuda" and d.train_x.numel() * 4 < 2 ** 31:
        d.train_x, d.train_y = d.train_x.to(rt.device), d.train_y.to(rt.device)


def _init_from(model, path: str, report) -> None:
    """Transfer learning (the notes): copy the weights whose names and shapes match."""
    weights = checkpoint.load_weights_file(path)
    own = model.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    report.line(f"init-from {path}: loaded {len(matching)} of {len(own)} tensors "
                f"({len(weights) - len(matching)} in the file did not match by name and shape)")


def freeze_layers(model, analysis, upto: str | None) -> list[str]:
    """Fix every layer up to and including `upto`, in graph order; returns their names.

    `upto` is a layer name from the analysis (`fc6`, `stage2.bottle3.conv2`) or a
    block's name (`layer2`: up to its last layer).
    """
    if not upto:
        return []
    layers = [n for n in analysis.graph if n != "input"]
    inside = [n for n in layers if n.startswith(upto + ".")]
    last = upto if upto in layers else (inside[-1] if inside else None)
    if last is None:
        raise CnnDslError(f"--freeze: no layer named '{upto}'{did_you_mean(upto, layers)}")
    frozen = set(layers[:layers.index(last) + 1])
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[0] in frozen:
            p.requires_grad_(False)
    return [n for n in layers if n in frozen]


def make_optimizer(c: Config, params) -> torch.optim.Optimizer:
    if not params:
        raise CnnDslError("every parameter is frozen: nothing to train (freeze fewer layers)")
    if c.optimizer == "sgd":   # mini-batch SGD with momentum (the notes; Sutskever et al. 2013)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    if c.optimizer == "adam":  # weight decay as an L2 term in the gradient (Kingma & Ba 2015)
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)  # decoupled decay


def lr_at(c: Config, step: int, steps_per_epoch: int) -> float:
    """The learning rate at iteration `step`: every schedule moves per iteration, not per epoch.

    >>> c = Config(lr=0.1, epochs=10, schedule="cosine", warmup_epochs=1)
    >>> lr_at(c, 0, 10), lr_at(c, 9, 10), round(lr_at(c, 55, 10), 4)   # warm-up, peak, middle
    (0.01, 0.1, 0.05)
    """
    total = max(1, c.epochs * steps_per_epoch)
    warmup = round(c.warmup_epochs * steps_per_epoch)
    if c.schedule == "onecycle":
        return c.lr * _one_cycle(step, total, warmup or round(0.3 * total))
    if step < warmup:  # linear warm-up (Goyal et al. 2017)
        return c.lr * (step + 1) / warmup
    if c.schedule == "step":
        step_size = c.step_size or max(1, c.epochs // 3)
        return c.lr * c.gamma ** (step // (step_size * steps_per_epoch))
    if c.schedule == "cosine":  # SGDR without restarts (Loshchilov & Hutter 2017)
        progress = (step - warmup) / max(1, total - warmup)
        return c.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return c.lr


def _one_cycle(step: int, total: int, rise: int) -> float:
    """Smith 2018's one cycle, as torch's OneCycleLR: lr/25 up to lr, then down to lr/25e4."""
    start, end = 1 / 25, 1 / 25e4
    if step < rise:
        return start + (1 - start) * (1 - math.cos(math.pi * step / rise)) / 2
    progress = (step - rise) / max(1, total - rise)
    return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2


def epoch_batches(n: int, batch_size: int, world: int, gen: torch.Generator | None = None) -> list:
    """One epoch's mini-batches: a permutation of 0..n-1 cut in `batch_size` pieces.

    A last piece with fewer than two images per process is dropped: batch norm needs
    two, and every DDP process must take part in every step.
    """
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2 * world:
        batches.pop()
    return batches


def train_epoch(run: Run, epoch: int) -> dict:
    """One pass over the training images; returns the epoch's loss, accuracy and speed."""
    c, rt, d = run.config, run.rt, run.data
    run.model.train()
    order = torch.Generator().manual_seed(derive_seed(c.seed, epoch, "order"))
    jitter = torch.Generator().manual_seed(derive_seed(c.seed, epoch, f"augment{rt.rank}"))
    torch.manual_seed(derive_seed(c.seed, epoch, f"dropout{rt.rank}"))
    batches = epoch_batches(len(d.train_y), c.batch_size, rt.world, order)
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)   # loss·n, correct, n
    check_every = 1 if rt.device.type == "cpu" else 20   # .item() waits for the GPU
    run.report.start_epoch(epoch + 1, c.epochs, len(batches))
    started = time.perf_counter()
    for i, idx in enumerate(batches):
        idx = idx[rt.rank::rt.world].to(d.train_x.device)   # this process's share
        x = run.augment(rt.images(d.train_x[idx]), jitter)
        x = (x - run.mean) / run.std
        y = d.train_y[idx].to(rt.device, non_blocking=True)
        lr = lr_at(c, epoch * run.steps_per_epoch + i, run.steps_per_epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        logits, loss = train_step(run, x, y)
        sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                             torch.tensor(float(len(y)), device=rt.device, dtype=torch.float64)])
        if (i + 1) % check_every == 0 or i + 1 == len(batches):
            _progress(run, sums, i + 1, started, epoch, lr, local=True)
    rt.all_reduce(sums)
    _progress(run, sums, len(batches), started, epoch, lr, local=False)
    loss, correct, n = sums.tolist()
    return {"loss": loss / n, "acc": correct / n, "lr": lr, "images": int(n),
            "seconds": time.perf_counter() - started}


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor):
    with run.rt.autocast():
        logits = run.model(x)
    # The loss in fp32 whatever autocast computed the logits in.
    loss = F.cross_entropy(logits.float(), y, label_smoothing=run.config.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return logits, loss


def _progress(run: Run, sums, step: int, started: float, epoch: int, lr: float, local: bool) -> None:
    """Update the progress bar, and stop the run the moment the loss is not finite."""
    loss, correct, n = sums.tolist()
    # Across processes the check waits for the epoch's all-reduce, so all stop together.
    if not math.isfinite(loss) and (not local or run.rt.world == 1):
        where = f"epoch {epoch + 1}, step {step}"
        last = run.out / "last.pt"
        kept = (f"the last good checkpoint is {last} (epoch {run.epoch})" if run.epoch
                else "no checkpoint was written")
        raise Diverged(f"training diverged: the loss became {loss} at {where} (lr {lr:.3g}); "
                       f"lower the learning rate; {kept}")
    ips = n * run.rt.world / max(time.perf_counter() - started, 1e-9)
    run.report.update(step, loss / max(n, 1), correct / max(n, 1), ips)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, rt: Runtime, mean: torch.Tensor,
             std: torch.Tensor, batch_size: int, tta: str = "none") -> dict:
    """Loss, top-1 and top-5 accuracy of images `x` (in [0, 1]) normalised by mean and std.

    With test-time augmentation the softmax is averaged over the views (the notes:
    AlexNet's ten patches, the four corners and the centre, and their mirrors)."""
    if len(y) == 0:
        return {"loss": None, "acc": None, "top5": None, "n": 0}
    model.eval()
    x, y = x[rt.rank::rt.world], y[rt.rank::rt.world]   # each process its share
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)   # loss·n, top-1, top-5, n
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size].to(rt.device)
        views = tta_views(rt.images(xb), tta, size=tuple(x.shape[-2:]))   # V×B×C×H×W
        with rt.autocast():
            logits = model(rt.images((views.flatten(0, 1) - mean) / std))
        probs = logits.float().softmax(1).view(len(views), len(yb), -1).mean(0)
        top = probs.topk(min(5, probs.shape[1]), dim=1).indices
        sums += torch.stack([F.nll_loss(probs.clamp_min(1e-12).log(), yb, reduction="sum").double(),
                             (top[:, 0] == yb).sum().double(), (top == yb[:, None]).any(1).sum().double(),
                             torch.tensor(float(len(yb)), device=rt.device, dtype=torch.float64)])
    loss, top1, top5, n = rt.all_reduce(sums).tolist()
    return {"loss": loss / n, "acc": top1 / n, "top5": top5 / n, "n": int(n)}


# --- checkpoints, metrics, summary ----------------------------------------------------


def _end_epoch(run: Run, metrics: dict) -> None:
    """Log the epoch, then write metrics and checkpoints together (Ctrl-C waits for them)."""
    run.report.epoch_line(_epoch_line(metrics, run.config.epochs))
    better = _improved(run.best, metrics)
    if better:
        run.best = better
    if not run.rt.is_main:
        return
    with checkpoint.sigint_deferred():
        with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
            f.flush()
            os.fsync(f.fileno())
        state = checkpoint_state(run)
        checkpoint.save(run.out / "last.pt", state)
        if better:
            checkpoint.save(run.out / "best.pt", state)


def _improved(best: dict | None, m: dict) -> dict | None:
    """The new best if this epoch is better: higher val accuracy (ties: lower val loss);
    without a validation split, lower training loss."""
    if m["val_acc"] is not None:
        new = {"metric": "val_acc", "value": m["val_acc"], "loss": m["val_loss"], "epoch": m["epoch"]}
        better = best is None or (new["value"], -new["loss"]) > (best["value"], -best["loss"])
    else:
        new = {"metric": "train_loss", "value": m["train_loss"], "loss": m["train_loss"], "epoch": m["epoch"]}
        better = best is None or new["value"] < best["value"]
    return new if better else None


def checkpoint_state(run: Run) -> dict:
    """Everything to rebuild the model and to resume the run (see cnndsl/checkpoint.py)."""
    cuda = run.rt.device.type == "cuda"
    order = torch.Generator().manual_seed(derive_seed(run.config.seed, run.epoch, "order"))
    return {
        "format": checkpoint.FORMAT, "version": checkpoint.VERSION,
        "spec": checkpoint.spec_record(run.spec),
        "input_shape": list(run.analysis.input_shape), "class_names": list(run.data.class_names),
        "config": asdict(run.config),
        "normalize": {"mean": run.mean.flatten().cpu(), "std": run.std.flatten().cpu()},
        "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": {"name": run.config.schedule, "step": run.epoch * run.steps_per_epoch,
                      "steps_per_epoch": run.steps_per_epoch},
        "epoch": run.epoch, "best": run.best, "elapsed": dict(run.elapsed),
        # The next epoch reseeds every stream from (seed, epoch); these are kept so the
        # exact state at the checkpoint can still be inspected or restored.
        "rng": {"torch": torch.get_rng_state(), "order": order.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if cuda else []},
    }


def _restore(run: Run, state: dict) -> None:
    run.raw_model.load_state_dict(state["model"])
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CnnDslError(f"cannot resume: the optimiser state does not fit ({e})") from None
    run.epoch, run.best, run.elapsed = int(state["epoch"]), state["best"], dict(state["elapsed"])
    torch.set_rng_state(state["rng"]["torch"])
    if run.rt.device.type == "cuda" and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def truncate_metrics(path: Path, epoch: int, rt: Runtime) -> None:
    """Keep only the lines of epochs 1..epoch: those after the checkpoint are redone."""
    if not rt.is_main:
        return
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [ln for ln in lines if _epoch_of(ln) is not None and _epoch_of(ln) <= epoch]
    if kept != lines or (epoch == 0 and path.exists()):
        text = "".join(ln + "\n" for ln in kept)
        checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def _epoch_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):  # a torn last line after kill -9
        return None


def _finish(run: Run) -> dict:
    d, totals = run.data, run.analysis.totals()
    test = evaluate(run.raw_model, d.test_x, d.test_y, run.rt, run.mean, run.std,
                    run.config.batch_size)
    e = run.elapsed
    summary = {
        "spec": run.spec.name, "data": d.name, "test_acc": test["acc"], "test_loss": test["loss"],
        "epochs": run.epoch, "seconds": round(e["seconds"], 2),
        "images_per_s": round(e["images"] / e["train_seconds"], 1) if e["train_seconds"] else None,
        "params": totals["params"], "macs": totals["macs"],
        "best_val_acc": run.best["value"] if run.best and run.best["metric"] == "val_acc" else None,
        "best_epoch": run.best["epoch"] if run.best else None,
        "device": str(run.rt.device.type), "world_size": run.rt.world,
        "train_images": len(d.train_y), "val_images": len(d.val_y), "test_images": test["n"],
    }
    if d.num_classes > 5:
        summary["test_top5"] = test["top5"]
    if run.rt.is_main:
        text = json.dumps(summary, indent=2) + "\n"
        checkpoint.atomic_write(run.out / "summary.json", lambda f: f.write(text.encode()))
        top5 = f" (top-5 {test['top5']:.4f})" if "test_top5" in summary else ""
        run.report.line(f"test acc {test['acc']:.4f}{top5} on {test['n']} images | "
                        f"{e['seconds']:.1f} s | {run.out / 'summary.json'}")
    return summary


def _announce(run: Run, frozen: list[str]) -> None:
    c, d, rt, t = run.config, run.data, run.rt, run.analysis.totals()
    where = f"{rt.device.type}" + (f" ×{rt.world} (DDP)" if rt.world > 1 else "")
    extras = [s for s, on in (("bf16", rt.bf16), ("channels_last", rt.channels_last),
                              ("compiled", c.compile)) if on]
    run.report.line(f"{run.spec.name}: {t['params']:,} params, {t['macs']:,} MACs | {d.name}: "
                    f"{len(d.train_y)} train / {len(d.val_y)} val / {len(d.test_y)} test | "
                    f"{where}{' ' + ', '.join(extras) if extras else ''} | {run.out}")
    if frozen:
        run.report.line(f"frozen: {len(frozen)} layers, {frozen[0]} … {frozen[-1]}")
    if run.epoch:
        run.report.line(f"resuming after epoch {run.epoch} from {run.out / 'last.pt'}")


def _epoch_line(m: dict, epochs: int) -> str:
    val = (f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}" if m["val_acc"] is not None
           else "no val split")
    width = len(str(epochs))
    return (f"epoch {m['epoch']:{width}d}/{epochs}  train loss {m['train_loss']:.4f} "
            f"acc {m['train_acc']:.4f}  {val}  lr {m['lr']:.3g}  {m['seconds']:.1f}s  "
            f"{m['images_per_s']:,.0f} img/s")


# --- progress -------------------------------------------------------------------------


class Reporter:
    """One line per epoch on any stdout; on a terminal, a live progress bar too.

    Only rank 0 reports. In CI (stdout not a terminal) the bar is off and the log
    is just the lines.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self.progress, self.task = None, None

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            if self.progress is not None:
                self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
            else:
                print(text, flush=True)
        except BrokenPipeError:
            # `cnndsl train ... | head`: the reader left; the run goes on, silently.
            self.enabled = False
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.live:
            return
        if self.progress is None:
            self.progress = _rich_progress()
            self.progress.start()
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps,
                                           loss=0.0, acc=0.0, ips=0.0)

    def update(self, step: int, loss: float, acc: float, ips: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=step, loss=loss, acc=acc, ips=ips)

    def epoch_line(self, text: str) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self.line(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _rich_progress():
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}  "
                               "{task.fields[ips]:,.0f} img/s"),
                    TimeRemainingColumn(), transient=True)


