"""`cnndsl features`: one layer's activations for the train, val and test images."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CnnDslError
from ..graph import shape_text
from .common import EXIT_OK, threads_sleep_when_idle


def add_parser(commands):
    p = commands.add_parser("features", help="a layer's activations (train/val/test) for a linear classifier")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--layer", required=True, help="a layer name from `cnndsl analyze` (e.g. fc7, f6)")
    p.add_argument("--data", help="data source (default: the one it was trained on)")
    p.add_argument("--out", metavar="FILE",
                   help="FILE.npz or FILE.pt (default: features_<layer>.npz beside CKPT)")
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
        out = Path(args.checkpoint).parent / f"features_{args.layer}.npz"
    if out.suffix not in (".npz", ".pt"):
        raise CnnDslError(f"--out {out}: write features to a .npz or .pt file")
    check_out(out, Path(args.checkpoint), args.overwrite)
    from ..training.inference import activations, load_for_inference, write_features

    loaded = load_for_inference(args, layer=args.layer)
    arrays = {}
    for name, split in loaded["splits"].items():
        arrays[f"{name}_x"] = activations(loaded, split, args.batch_size, loaded["input_shape"])
        arrays[f"{name}_y"] = split.y.cpu()
    check_out(out, Path(args.checkpoint), args.overwrite)   # again: it took a while
    write_features(out, arrays, loaded["data"].class_names, args.layer)
    shapes = ", ".join(f"{s} {shape_text(arrays[s + '_x'].shape)}" for s in ("train", "val", "test"))
    print(f"wrote {out}: layer {args.layer}; {shapes}")
    return EXIT_OK


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
