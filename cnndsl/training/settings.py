"""Training settings: defaults, overridden by the spec's `train:` section, overridden by flags.

Every setting is one row of `SETTINGS`; the `Config` dataclass, the checks of a spec's
`train:` section (`make_config`) and the flags of `cnndsl train` (`add_flags`) are all
built from it. Torch-free: `cnndsl analyze` reads the optimiser's name from here
(`optimizer_name`), and `cnndsl --help` builds the flags.

>>> config = make_config(None, {"optimizer": "adam", "epochs": 3})
>>> config.optimizer, config.epochs, config.lr, config.batch_size   # Adam's default lr
('adam', 3, 0.001, 64)
>>> make_config(None, {"batch_size": 0})
Traceback (most recent call last):
cnndsl.errors.CnnDslError: error: batch_size must be a number ≥ 1 and ≤ 2**24, got 0
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Any, Callable, Optional

from ..backends import INIT_SCHEMES
from ..errors import CnnDslError, Span, did_you_mean

INT_DIGITS = 4300   # the most digits Python turns into an int (sys.get_int_max_str_digits())


@dataclass(frozen=True)
class Setting:
    """One training setting: its Config field, where it is set, and what it may be."""
    name: str                  # the Config field, and the flag's argparse dest
    type: type                 # str, int, float, bool or dict
    default: Any
    why: str                   # what it does, and why (the Config field's documentation)
    key: str | None = None     # its key in a spec's `train:` section, dotted when nested
                               # ("optimizer.lr"); None: a flag only
    flag: str | None = None    # its flag ("--lr"; "--no-bf16" turns a setting that is on by
                               # default off, "--no-augment" empties one); None: the spec only
    help: str | None = None    # the flag's --help text (None: argparse shows none)
    metavar: str | None = None
    choices: tuple = ()        # the values a text setting may take
    bounds: tuple = ()         # what a number must satisfy: (("≥", 1), ("≤", 2**24))
    none_ok: bool = False      # `null` in the spec is a value (it means "the default rule")
    check: Callable | None = None   # a check of its own: (value, span) → value

    @property
    def spec_only(self) -> bool:
        return self.flag is None

    @property
    def flag_only(self) -> bool:
        return self.key is None


def _augment(value, span):
    """`augment:` is checked by building it (augment.py imports torch: only here)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CnnDslError(f"augment must be a mapping like {{hflip: true, crop: 4}}, "
                          f"got {_shown(value)}", span)
    from .augment import build_augment

    try:
        build_augment(value)
    except CnnDslError as e:
        raise CnnDslError(e.message, span) from None
    return dict(value)



SETTINGS = (
    # data
    Setting("data", str, "digits", "a cnndsl.data source; scikit-learn's digits need no download",
            key="data", flag="--data",
            help="digits | mnist:DIR | cifar10:DIR | folder:DIR | wds:SPEC | wds:pipe:CMD | "
                 "synthetic[:N] (default: the spec's, else digits)"),
    Setting("val_fraction", float, 0.1, "training images held out to pick the best epoch (the "
            "notes: \"use cross-validation for your parameters\")",
            key="val_fraction", flag="--val-fraction",
            help="share of training images held out for validation", bounds=(("≥", 0), ("<", 1))),
    Setting("limit", int, None, "train on only the first N images: quick experiments and tests",
            flag="--limit", metavar="N", help="train on the first N training images only",
            bounds=(("≥", 1), ("≤", 2**40)), none_ok=True),
    Setting("cache", str, "auto", "a folder's images decoded once into memory (ram), or decoded "
            "per batch in worker processes (stream); auto: ram when they fit a quarter of "
            "the memory and no per-sample crop is asked for", flag="--cache",
            help="folder:DIR in memory (ram) or streamed from disk (stream); default auto",
            choices=("auto", "ram", "stream")),
    Setting("workers", int, None, "DataLoader processes decoding a streamed folder; None: the "
            "CPU cores this process may use, less one", flag="--workers", metavar="N",
            help="processes decoding a streamed folder (default: the usable cores less one)",
            bounds=(("≥", 0), ("≤", 1024)), none_ok=True),
    Setting("skip_bad_images", bool, False, "an image file that cannot be decoded is counted and "
            "replaced by another image of its batch instead of stopping the run",
            flag="--skip-bad-images",
            help="count images that cannot be decoded and go on, instead of stopping"),
    Setting("augment", dict, {}, "the notes' \"create virtual training data\": hflip, crop, "
            "jitter, affine (see augment.py)", key="augment", check=_augment,
            flag="--no-augment", help="train without the spec's augmentation (its `augment:`), "
                                      "e.g. a CIFAR-10 recipe's flips on digits"),
    # model
    Setting("init", str, "default", "default (PyTorch's) | xavier (the notes: Var(W) = 1/n_in) "
            "| kaiming (He et al. 2015: Var(W) = 2/n_in, for ReLU nets)",
            key="init", flag="--init", choices=INIT_SCHEMES),
    Setting("init_from", str, None, "transfer learning (the notes): start from a checkpoint's "
            "weights wherever names and shapes match", flag="--init-from", metavar="CKPT",
            help="start from the weights of CKPT that match by name and shape; "
                 "torchvision:NAME or a torchvision .pth: all of them, by graph order"),
    Setting("freeze", str, None, "... and keep layers up to this one fixed, fine-tuning the rest "
            "(batch-norm statistics there still follow the new data)", flag="--freeze",
            metavar="UPTO_LAYER", help="keep layers up to and including this one fixed"),
    Setting("strict", bool, False, "a layer that does not fit its input is an error "
            "(analyze --strict)", flag="--strict", help="a layer that does not fit is an error"),
    # optimisation
    Setting("epochs", int, 10, "passes over the training set", key="epochs", flag="--epochs",
            bounds=(("≥", 1), ("≤", 10**6))),
    Setting("batch_size", int, 64, "mini-batch SGD (the notes); global, split over DDP processes",
            key="batch_size", flag="--batch-size",
            help="global mini-batch size (split over DDP processes)", bounds=(("≥", 1), ("≤", 2**24))),
    Setting("optimizer", str, "sgd", "sgd with momentum | adam (Kingma & Ba 2015) | adamw "
            "(decoupled weight decay, Loshchilov & Hutter 2019)",
            key="optimizer.name", flag="--optimizer", choices=("sgd", "adam", "adamw")),
    Setting("lr", float, None, "peak learning rate; None: 0.01 for SGD, 0.001 for Adam(W)",
            key="optimizer.lr", flag="--lr", help="peak learning rate", bounds=((">", 0),)),
    Setting("momentum", float, 0.9, "SGD's momentum (Sutskever et al. 2013); Adam ignores it",
            key="optimizer.momentum", flag="--momentum", help="SGD momentum",
            bounds=(("≥", 0), ("<", 1))),
    Setting("weight_decay", float, 0.0, "L2 regularisation (the notes: \"use regularization\")",
            key="optimizer.weight_decay", flag="--weight-decay", bounds=(("≥", 0),)),
    Setting("schedule", str, "cosine", "none | step | cosine (Loshchilov & Hutter 2017) | onecycle "
            "(Smith 2018); all move per iteration", key="schedule.name", flag="--schedule",
            choices=("none", "step", "cosine", "onecycle")),
    Setting("warmup_epochs", float, 0.0, "linear warm-up (Goyal et al. 2017); onecycle: its rise "
            "(default 30%)", key="schedule.warmup_epochs", flag="--warmup-epochs",
            bounds=(("≥", 0), ("≤", 10**6))),
    Setting("step_size", int, None, "step schedule: epochs between decays; None: a third of the run",
            key="schedule.step_size", bounds=(("≥", 1), ("≤", 10**6)), none_ok=True),
    Setting("gamma", float, 0.1, "step schedule: the factor of each decay (the ResNet paper's ÷10)",
            key="schedule.gamma", bounds=((">", 0),)),
    Setting("label_smoothing", float, 0.0, "Szegedy et al. 2016, \"Rethinking the Inception "
            "architecture\", §7", key="label_smoothing", flag="--label-smoothing",
            bounds=(("≥", 0), ("<", 1))),
    Setting("seed", int, 0, "every random choice: init, split, batch order, augmentation, dropout",
            key="seed", flag="--seed", bounds=(("≥", 0), ("<", 2**63))),
    # hardware
    Setting("device", str, "auto", "auto: CUDA when available, else CPU", flag="--device",
            help="default auto: CUDA when available", choices=("auto", "cpu", "cuda")),
    Setting("bf16", bool, True, "on CUDA: autocast to bfloat16 (fp32's range: no loss scaling)",
            flag="--no-bf16", help="on CUDA, train in fp32 instead of bf16 autocast"),
    Setting("channels_last", bool, True, "on CUDA: NHWC memory layout, what tensor-core "
            "convolutions want", flag="--no-channels-last", help="on CUDA, keep the NCHW memory layout"),
    Setting("compile", bool, False, "torch.compile the model: faster steps after a slow first one",
            flag="--compile", help="torch.compile the model"),
    # outputs
    Setting("tensorboard", bool, False, "TensorBoard's event files in DIR/tensorboard, each "
            "epoch's numbers as scalars (metrics.csv is written either way)",
            key="tensorboard", flag="--tensorboard",
            help="also log each epoch to DIR/tensorboard for TensorBoard (metrics.csv is always written)"),
)

BY_NAME = {s.name: s for s in SETTINGS}
# Keys of a spec's `train:` section (dotted when nested) and the Config field each sets.
SPEC_KEYS = {s.key: s.name for s in SETTINGS if s.key}
# `optimizer: adam` is short for `optimizer: {name: adam}`.
NESTED = tuple(dict.fromkeys(k.split(".")[0] for k in SPEC_KEYS if k.endswith(".name")))


def _config_field(s: Setting):
    annotation = s.type if s.default is not None else Optional[s.type]
    metadata = {"setting": s, "help": s.why}
    if isinstance(s.default, dict):
        return s.name, annotation, field(default_factory=lambda: dict(s.default), metadata=metadata)
    return s.name, annotation, field(default=s.default, metadata=metadata)


Config = make_dataclass("Config", [_config_field(s) for s in SETTINGS], namespace={
    "__doc__": "A run's training settings, one field per row of `SETTINGS`:\n\n" + "\n".join(
        f"    {s.name} = {s.default!r}: {s.why}" for s in SETTINGS)})
Config.__module__ = __name__


def make_config(spec, flags: dict | None = None, base: dict | None = None) -> Config:
    """Defaults ← the spec's `train:` section ← `flags` (Config field → value, None = not given).

    `base` (a resumed checkpoint's config) replaces defaults and spec together. A data
    source that runs a command (`wds:pipe:…`) is taken from `flags` alone: a spec or a
    checkpoint may come from anyone.
    """
    values = asdict(Config())
    origin = None   # where `data` came from, when not from the defaults: (words, span)
    if base is not None:
        values.update((k, v) for k, v in base.items() if k in values)
        origin = ("the checkpoint's stored config", None)
    elif spec is not None:
        settings = _spec_settings(spec)
        for name, (value, span) in settings.items():
            values[name] = check_value(BY_NAME[name], value, span)
        if "data" in settings:
            origin = ("the spec's train: data:", settings["data"][1])
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = check_value(BY_NAME[name], value, None)
    if origin is not None and (flags or {}).get("data") is None:
        from .pipe_shards import refuse_command_source   # torch-free

        refuse_command_source(values["data"], *origin)
    config = Config(**values)
    if config.lr is None:
        config.lr = 0.01 if config.optimizer == "sgd" else 1e-3
    return config


def check_spec(spec) -> None:
    """A spec's `train:` section checked without building anything (`cnndsl analyze`): an
    unknown key or a bad value is an error at its file:line:col. `augment:` is checked
    when `cnndsl train` builds it (its check needs torch)."""
    for name, (value, span) in _spec_settings(spec).items():
        if BY_NAME[name].check is None:
            check_value(BY_NAME[name], value, span)


def optimizer_name(train) -> str:
    """The optimiser a spec's `train:` section names, for `cnndsl analyze`'s memory estimate.

    Both forms of the key work; a malformed section gives the default (analysis goes on,
    and `cnndsl train` reports the setting):

    >>> optimizer_name({"optimizer": "adam"}), optimizer_name({"optimizer": {"name": "adamw"}})
    ('adam', 'adamw')
    >>> optimizer_name({}), optimizer_name({"optimizer": ["adam"]}), optimizer_name("adam")
    ('sgd', 'sgd', 'sgd')
    """
    setting = BY_NAME["optimizer"]
    if isinstance(train, dict):
        for dotted, value, _ in _flatten(train):
            if dotted == setting.key:
                try:
                    return check_value(setting, value, None)
                except CnnDslError:
                    break
    return setting.default


def add_flags(parser) -> None:
    """The flags of `cnndsl train` that set a setting: dest = the Config field, None = not given."""
    for s in SETTINGS:
        if s.flag is None:
            continue
        options: dict = {"dest": s.name, "help": s.help}
        if s.metavar:
            options["metavar"] = s.metavar
        if s.type is bool:
            options.update(action="store_const", const=not s.flag.startswith("--no-"))
        elif s.type is dict:   # only ever turned off: --no-augment
            options.update(action="store_const", const={})
        elif s.choices:
            options["choices"] = list(s.choices)
        elif s.type is int:
            options["type"] = _int_flag
        elif s.type is float:
            options["type"] = float
        parser.add_argument(s.flag, **options)


def _int_flag(text: str):
    """argparse's `type=int`, except that a number too long for int() goes on as text, for
    the setting's check to refuse in one line."""
    try:
        return int(text)
    except ValueError:
        if _is_integer_text(text):
            return text
        raise


_int_flag.__name__ = "int"   # argparse: "invalid int value: 'abc'", as with type=int


# --- the spec's `train:` section ---------------------------------------------------------


def _flatten(train: dict):
    """(dotted key, value, top-level key) for each setting a `train:` section gives."""
    for key, value in train.items():
        if key in NESTED and isinstance(value, dict):
            for sub, v in value.items():
                yield f"{key}.{sub}", v, key
        else:
            yield (f"{key}.name" if key in NESTED else str(key)), value, key


def _spec_settings(spec) -> dict:
    """The spec's `train:` section as {field: (value, span of its key)}."""
    settings = {}
    for dotted, value, key in _flatten(spec.train):
        span = spec.train_spans.get(dotted) or spec.train_spans.get(str(key))
        if dotted not in SPEC_KEYS:
            raise CnnDslError(_unknown_key(dotted), span)
        settings[SPEC_KEYS[dotted]] = (value, span)
    return settings


def _unknown_key(dotted: str) -> str:
    hint = did_you_mean(dotted, SPEC_KEYS)
    nested = [k for k in SPEC_KEYS if k.endswith("." + dotted)]
    if not hint and nested:  # `lr:` at the top level: it goes under `optimizer:`
        hint = f" — did you mean '{nested[0]}' (`{dotted}` under `{nested[0].split('.')[0]}:`)?"
    return f"unknown train key '{dotted}'{hint}; valid: {', '.join(SPEC_KEYS)}"


# --- checks ------------------------------------------------------------------------------


def check_value(s: Setting, value, span: Span | None):
    """The value of one setting, checked (and converted: YAML reads `1e-3` as text)."""
    def bad(what: str, got=value):
        return CnnDslError(f"{s.name} must be {what}, got {_shown(got)}", span)

    if value is None and s.none_ok:
        return None
    if s.check is not None:
        return s.check(value, span)
    if s.choices:
        if value not in s.choices:
            hint = did_you_mean(value, s.choices) if isinstance(value, str) else ""
            raise CnnDslError(f"{s.name} must be one of {', '.join(s.choices)}, "
                              f"got {_shown(value)}{hint}", span)
        return value
    if s.type in (int, float):
        return _number(s, value, bad)
    if s.type is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if not isinstance(value, str) or not value:
        raise bad("text")
    return value


def _number(s: Setting, value, bad):
    number = f"a number {_bounds_text(s.bounds)}".rstrip()    # "a number ≥ 1 and ≤ 2**24"
    if isinstance(value, str):
        text = value.strip()
        if _is_integer_text(text) and len(text.lstrip("+-").replace("_", "")) > INT_DIGITS:
            raise bad(number, got=_Digits(text))   # too long for int(): beyond every bound
        try:
            value = int(text) if _is_integer_text(text) else float(text)
        except ValueError:
            raise bad("a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad("a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad("a finite number")
    if s.type is int and isinstance(value, float):
        if not value.is_integer():
            raise bad("a whole number")
        value = int(value)
    if s.type is float and isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            raise bad(f"{number} within a float's range (±1.8e308)") from None
    for op, bound in s.bounds:
        if not _OPS[op](value, bound):   # the value as converted: `lr: 0` and `--lr 0` say 0.0
            raise bad(number, got=value)
    return value


_OPS = {"≥": lambda a, b: a >= b, ">": lambda a, b: a > b,
        "≤": lambda a, b: a <= b, "<": lambda a, b: a < b}


def _bounds_text(bounds) -> str:
    """(("≥", 1), ("≤", 2**24)) → '≥ 1 and ≤ 2**24'."""
    def shown(b):
        if isinstance(b, int) and b >= 2**16 and b & (b - 1) == 0:
            return f"2**{b.bit_length() - 1}"
        return str(b)
    return " and ".join(f"{op} {shown(b)}" for op, b in bounds)


def _is_integer_text(text: str) -> bool:
    digits = text.strip().lstrip("+-").replace("_", "")
    return digits.isascii() and digits.isdigit()


class _Digits(str):
    """A number written with more digits than int() reads."""


def _digits(n: int) -> int:
    """How many decimal digits |n| has, without str(n) (refused beyond INT_DIGITS)."""
    n = abs(n)
    d = max(1, math.floor((n.bit_length() - 1) * math.log10(2)) + 1)
    return d + (n >= 10 ** d)


def _shown(value) -> str:
    """A value for a message: never str() of a huge int, never pages of text."""
    if isinstance(value, _Digits):
        return f"a number with {len(value.strip().lstrip('+-').replace('_', ''))} digits"
    if isinstance(value, int) and not isinstance(value, bool) and _digits(value) > 30:
        return f"a number with {_digits(value)} digits"
    try:
        text = repr(value)
    except ValueError:   # a huge int inside a list or mapping
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 80 else f"{text[:60]}… ({len(text)} characters)"
