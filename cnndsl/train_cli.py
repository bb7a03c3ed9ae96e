"""`cnndsl train`, `cnndsl eval`, `cnndsl features`: their flags, and the glue to cnndsl.train.

Nothing here imports torch at module level: `cnndsl analyze` builds the same parser
and must start without it. torch is imported inside the run functions.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import CnnDslError, did_you_mean

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
# The flags that set a Config field (argparse dest → field); None means "not given".
CONFIG_FLAGS = ("data", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                "schedule", "warmup_epochs", "label_smoothing", "init", "device", "seed",
                "val_fraction", "limit", "bf16", "channels_last", "compile", "init_from",
                "freeze", "strict")


def add_commands(commands) -> None:
    _add_train(commands)
    _add_eval(commands)
    _add_features(commands)


def _add_train(commands) -> None:
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
    p.set_defaults(run=run_train)


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="top-1/top-5 accuracy of a checkpoint, optionally with TTA")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--data", help="data source (default: the one it was trained on)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--tta", choices=["none", "flip", "10crop"], default="none",
                   help="average the softmax over mirrored views, or the ten patches (the notes)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_eval)


def _add_features(commands) -> None:
    p = commands.add_parser("features", help="a layer's activations (train/val/test) for a linear classifier")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--layer", required=True, help="a layer name from `cnndsl analyze` (e.g. fc7, f6)")
    p.add_argument("--data", help="data source (default: the one it was trained on)")
    p.add_argument("--out", metavar="FILE",
                   help="FILE.npz or FILE.pt (default: features_<layer>.npz beside CKPT)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(run=run_features)


def _threads_sleep_when_idle() -> None:
    """Before torch loads OpenMP: idle worker threads sleep instead of spinning.

    On a busy machine (a shared CI runner, two jobs on two cores) spinning threads
    wait on each other's time slices, and small CPU steps become 10-30× slower.
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# --- train ----------------------------------------------------------------------------


def run_train(args) -> int:
    _threads_sleep_when_idle()
    from . import checkpoint
    from .spec import resolve
    from .train import Diverged, make_config, train

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
    from . import checkpoint

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


# --- eval -----------------------------------------------------------------------------


def run_eval(args) -> int:
    _threads_sleep_when_idle()
    from .train import evaluate

    loaded = _load_for_inference(args)
    x, y = loaded["splits"][args.split]
    result = evaluate(loaded["model"], x, y, loaded["rt"], loaded["mean"], loaded["std"],
                      args.batch_size, tta=args.tta)
    result = {"checkpoint": str(args.checkpoint), "data": loaded["data"].name, "split": args.split,
              "tta": args.tta, "top1": result["acc"], "top5": result["top5"],
              "loss": result["loss"], "images": result["n"]}
    if args.json:
        print(json.dumps(result))
    elif result["images"] == 0:
        print(f"the {args.split} split of {result['data']} is empty")
    else:
        print(f"{args.split} ({result['data']}, {result['images']} images, tta {args.tta}): "
              f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  loss {result['loss']:.4f}")
    return EXIT_OK


def _load_for_inference(args, layer: str | None = None) -> dict:
    """The checkpoint's model (up to `layer`, if given) on its device, and its data."""
    import torch

    from . import checkpoint
    from .data import load_data
    from .train import make_config, start_runtime

    if args.batch_size < 1:
        raise CnnDslError(f"--batch-size must be a positive whole number, got {args.batch_size}")
    state = checkpoint.load(args.checkpoint)
    spec = checkpoint.spec_of(state, args.checkpoint)
    config = make_config(spec, {"data": args.data, "device": args.device}, base=state["config"])
    analysis = spec.analyze(strict=config.strict)
    analysis.raise_for_errors()
    model = _model_upto(analysis, spec.name, layer, state, args.checkpoint)
    rt = start_runtime(config)
    data = load_data(config.data, analysis.input_shape, val_fraction=config.val_fraction,
                     seed=config.seed, limit=config.limit)
    if data.num_classes > len(state["class_names"]) and layer is None:
        raise CnnDslError(f"'{data.name}' has {data.num_classes} classes; {args.checkpoint} was "
                          f"trained on {len(state['class_names'])}")
    norm = state["normalize"]
    return {"model": model.to(rt.device).eval(), "rt": rt, "data": data,
            "mean": norm["mean"].to(rt.device, torch.float32).view(1, -1, 1, 1),
            "std": norm["std"].to(rt.device, torch.float32).view(1, -1, 1, 1),
            "splits": {"train": (data.train_x, data.train_y), "val": (data.val_x, data.val_y),
                       "test": (data.test_x, data.test_y)}}


def _model_upto(analysis, name: str, layer: str | None, state: dict, where):
    """The network, or its part that ends at `layer` (all that layer depends on), with the
    checkpoint's weights."""
    import networkx as nx

    from .compile import build_module

    g = analysis.graph
    if layer is not None:
        layers = [n for n in g if n != "input"]
        if layer not in layers:
            raise CnnDslError(f"no layer named '{layer}'{did_you_mean(layer, layers)} "
                              f"(`cnndsl analyze` lists them)")
        keep = nx.ancestors(g, layer) | {layer}
        part = nx.DiGraph(**g.graph)
        part.add_nodes_from((n, g.nodes[n]) for n in g if n in keep)   # keeps graph order
        part.add_edges_from((u, v, d) for u, v, d in g.edges(data=True) if u in keep and v in keep)
        part.graph["output"] = layer
        g = part
    model = build_module(g, name)
    weights = {k: v for k, v in state["model"].items() if k in model.state_dict()}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CnnDslError(f"{where}: its weights do not fit its spec: "
                          f"{str(e).splitlines()[0]}") from None
    return model


# --- features -------------------------------------------------------------------------


def run_features(args) -> int:
    _threads_sleep_when_idle()
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"features_{args.layer}.npz"
    if out.suffix not in (".npz", ".pt"):
        raise CnnDslError(f"--out {out}: write features to a .npz or .pt file")
    loaded = _load_for_inference(args, layer=args.layer)
    arrays = {}
    for split, (x, y) in loaded["splits"].items():
        arrays[f"{split}_x"] = _activations(loaded, x, args.batch_size)
        arrays[f"{split}_y"] = y.cpu()
    _write_features(out, arrays, loaded["data"].class_names, args.layer)
    shapes = ", ".join(f"{s} {'×'.join(map(str, arrays[s + '_x'].shape))}" for s in ("train", "val", "test"))
    print(f"wrote {out}: layer {args.layer}; {shapes}")
    return EXIT_OK


def _activations(loaded: dict, x, batch_size: int):
    import torch

    rt, model, parts = loaded["rt"], loaded["model"], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = rt.images(x[start:start + batch_size])
            with rt.autocast():
                parts.append(model((xb - loaded["mean"]) / loaded["std"]).float().cpu())
        if not parts:  # an empty split (no validation images): 0 × the layer's shape
            probe = model(rt.images(torch.zeros(1, *x.shape[1:])))
            return torch.zeros(0, *probe.shape[1:])
    return torch.cat(parts)


def _write_features(out: Path, arrays: dict, class_names: list, layer: str) -> None:
    import numpy as np
    import torch

    from .checkpoint import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        payload = {**arrays, "class_names": list(class_names), "layer": layer}
        atomic_write(out, lambda f: torch.save(payload, f))
    else:
        payload = {k: v.numpy() for k, v in arrays.items()}
        payload.update(class_names=np.array(class_names), layer=np.array(layer))
        atomic_write(out, lambda f: np.savez(f, **payload))
