"""`cnndsl train`: its flags, and the glue to cnndsl.training (torch is imported only when it runs)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import CnnDslError
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, threads_sleep_when_idle

# The flags that set a Config field (argparse dest → field); None means "not given".
CONFIG_FLAGS = ("data", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                "schedule", "warmup_epochs", "label_smoothing", "init", "device", "seed",
                "val_fraction", "limit", "bf16", "channels_last", "compile", "init_from",
                "freeze", "strict")


def add_parser(commands):
    p = commands.add_parser("train", help="compile a spec and train it (CPU, GPU, torchrun for DDP)",
                            description="Train SPEC. Settings: defaults, then the spec's `train:` "
                                        "section, then these flags.")
    p.add_argument("spec", help="a .yaml/.yml/.cnn file, a zoo name (lenet5), or inline DSL text")
    p.add_argument("--data", help="digits | mnist:DIR | cifar10:DIR | folder:DIR | synthetic[:N] "
                                  "(default: the spec's, else digits)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global mini-batch size (split over DDP processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["none", "step", "cosine", "onecycle"])
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--init", choices=["default", "xavier", "kaiming"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: CUDA when available")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fraction", type=float, help="share of training images held out for validation")
    p.add_argument("--limit", type=int, metavar="N", help="train on the first N training images only")
    p.add_argument("--no-bf16", dest="bf16", action="store_const", const=False,
                   help="on CUDA, train in fp32 instead of bf16 autocast")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                   help="on CUDA, keep the NCHW memory layout")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from the weights of CKPT that match by name and shape")
    p.add_argument("--freeze", metavar="UPTO_LAYER", help="keep layers up to and including this one fixed")
    p.add_argument("--strict", action="store_const", const=True,
                   help="a layer that does not fit is an error")
    p.add_argument("--out", metavar="DIR", help="where checkpoints and metrics go (default runs/<spec name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from DIR/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start afresh even though DIR holds a run")
    return p


def run(args) -> int:
    threads_sleep_when_idle()
    from ..lang.spec import resolve
    from ..training.loop import Diverged, train
    from ..training.settings import make_config

    spec = resolve(args.spec)
    out = Path(args.out or Path("runs") / spec.name)
    flags = {name: getattr(args, name) for name in CONFIG_FLAGS}
    state = _resume_state(out, spec) if args.resume else None
    if state is None:
        _refuse_to_overwrite(out, args.overwrite)
    config = make_config(spec, flags, base=state["config"] if state else None)
    try:
        train(spec, config, out, resume=state)
    except Diverged as e:
        print(e, file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        last = out / "last.pt"
        where = (f"the last checkpoint is {last}; continue with: cnndsl train {args.spec} "
                 f"--out {out} --resume" if last.exists() else "no checkpoint was written")
        print(f"interrupted: {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _resume_state(out: Path, spec) -> dict:
    from ..training import checkpoint

    last = out / "last.pt"
    if not last.exists():
        raise CnnDslError(f"nothing to resume: no checkpoint at {last}")
    state = checkpoint.load(last)
    if state["spec"]["digest"] != spec.digest:
        raise CnnDslError(f"{last} is a checkpoint of spec '{state['spec']['name']}' "
                          f"(sha256 {state['spec']['digest'][:12]}…), not of this spec "
                          f"'{spec.name}' (sha256 {spec.digest[:12]}…): give another --out")
    return state


def _refuse_to_overwrite(out: Path, overwrite: bool) -> None:
    if (out / "last.pt").exists() and not overwrite:
        raise CnnDslError(f"{out} already holds a run ({out / 'last.pt'}): add --resume to continue it, "
                          f"--overwrite to start again, or give another --out")
