"""Training settings: defaults, overridden by the spec's `train:` section, overridden by flags."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..backends.torch_fx import INIT_SCHEMES
from ..errors import CnnDslError, Span, did_you_mean
from .augment import build_augment


@dataclass
class Config:
    # data
    data: str = "digits"            # a cnndsl.data source; scikit-learn's digits need no download
    val_fraction: float = 0.1       # training images held out to pick the best epoch (the notes:
                                    # "use cross-validation for your parameters")
    limit: int | None = None        # train on only the first N images: quick experiments and tests
    augment: dict = field(default_factory=dict)  # the notes' "create virtual training data":
                                    # hflip, crop, jitter, affine (see augment.py)
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
