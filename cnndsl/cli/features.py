"""`cnndsl features`: one layer's activations for the train, val and test images."""
from __future__ import annotations

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
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p


def run(args) -> int:
    threads_sleep_when_idle()
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"features_{args.layer}.npz"
    if out.suffix not in (".npz", ".pt"):
        raise CnnDslError(f"--out {out}: write features to a .npz or .pt file")
    from ..training.inference import activations, load_for_inference, write_features

    loaded = load_for_inference(args, layer=args.layer)
    arrays = {}
    for split, (x, y) in loaded["splits"].items():
        arrays[f"{split}_x"] = activations(loaded, x, args.batch_size)
        arrays[f"{split}_y"] = y.cpu()
    write_features(out, arrays, loaded["data"].class_names, args.layer)
    shapes = ", ".join(f"{s} {shape_text(arrays[s + '_x'].shape)}" for s in ("train", "val", "test"))
    print(f"wrote {out}: layer {args.layer}; {shapes}")
    return EXIT_OK
