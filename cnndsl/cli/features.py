"""`cnndsl features`: one layer's activations for the train, val and test images."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CnnDslError
from ..graph import shape_text
from .common import EXIT_OK, threads_sleep_when_idle


def add_parser(commands):
    p = commands.add_parser("features", help="a layer's activations (train/val/test) for a linear classifier")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="a checkpoint of `cnndsl train`; with --weights, a spec (a file, a zoo "
                        "name or inline DSL) instead")
    p.add_argument("--layer", required=True, help="a layer name from `cnndsl analyze` (e.g. fc7, f6)")
    p.add_argument("--weights", metavar="W",
                   help="the spec's weights: a checkpoint, a state_dict .pth or torchvision:NAME, "
                        "as --init-from takes them (images are normalised by the training "
                        "split's mean and std, as `cnndsl train` does)")
    p.add_argument("--data", help="data source (default: the one it was trained on)")
    p.add_argument("--out", metavar="FILE",
                   help="FILE.npz or FILE.pt (default: features_<layer>.npz beside CKPT; "
                        "with --weights, in the current folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace FILE if it exists (never the checkpoint itself)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p


def run(args) -> int:
    threads_sleep_when_idle()
    if args.out:
        out = Path(args.out)
    else:
        if any(sep in args.layer for sep in "/\\\0") or args.layer.startswith("."):
            raise CnnDslError(f"--layer: '{args.layer[:80]}' is not a layer name (`cnndsl analyze` lists them)")
        folder = Path(".") if args.weights else Path(args.checkpoint).parent
        out = folder / f"features_{args.layer}.npz"
    if out.suffix not in (".npz", ".pt"):
        raise CnnDslError(f"--out {out}: write features to a .npz or .pt file")
    source = Path(args.weights or args.checkpoint)   # the file never written over
    check_out(out, source, args.overwrite)
    from ..training.inference import activations, load_for_inference, write_features

    loaded = _with_weights(args) if args.weights else load_for_inference(args, layer=args.layer)
    arrays = {}
    for name, split in loaded["splits"].items():
        arrays[f"{name}_x"] = activations(loaded, split, args.batch_size, loaded["input_shape"])
        arrays[f"{name}_y"] = split.y.cpu()
    check_out(out, source, args.overwrite)   # again: it took a while
    write_features(out, arrays, loaded["data"].class_names, args.layer)
    shapes = ", ".join(f"{s} {shape_text(arrays[s + '_x'].shape)}" for s in ("train", "val", "test"))
    print(f"wrote {out}: layer {args.layer}; {shapes}")
    return EXIT_OK


def _with_weights(args) -> dict:
    """--weights: the spec (CKPT) up to --layer with those weights, on --data or the spec's
    data, normalised by the training split's per-channel mean and std as `cnndsl train`
    normalises it: the notes' pretrained "ConvNet as fixed feature extractor"."""
    from ..backends import weights
    from ..backends.torch_fx import build_module
    from ..lang.spec import resolve
    from ..training.inference import analyzed, check_batch_size, model_upto, put_to_use
    from ..training.settings import make_config

    check_batch_size(args.batch_size)
    spec = resolve(args.checkpoint)
    config = make_config(spec, {"data": args.data, "device": args.device})
    analysis = analyzed(spec, config.strict)
    whole = build_module(analysis.graph, spec.name)
    print(f"weights {weights.load(whole, args.weights)}")
    model = model_upto(analysis, spec.name, args.layer, {"model": whole.state_dict()}, args.weights)
    return put_to_use(model, analysis, config)


def check_out(out: Path, checkpoint: Path, overwrite: bool) -> None:
    """Never write over the checkpoint (whatever the path, link or flag); over any other
    existing file only with --overwrite; never over a folder."""
    if not (out.exists() or out.is_symlink()):
        return
    try:
        same = checkpoint.exists() and os.path.samefile(out, checkpoint)
    except OSError:
        same = False
    if same or out.resolve() == checkpoint.resolve():
        raise CnnDslError(f"--out {out} is the checkpoint {checkpoint} itself: "
                          "features go to another file")
    if out.is_dir():
        raise CnnDslError(f"--out {out} is a folder: give a FILE.npz or FILE.pt path")
    if not overwrite:
        raise CnnDslError(f"--out {out} already exists: add --overwrite to replace it, "
                          "or give another --out")
