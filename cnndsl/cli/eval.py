"""`cnndsl eval`: top-1/top-5 accuracy of a checkpoint, optionally with test-time augmentation."""
from __future__ import annotations


from ..training.rundir import dumps
from .common import EXIT_OK, threads_sleep_when_idle


def add_parser(commands):
    p = commands.add_parser("eval", help="top-1/top-5 accuracy of a checkpoint, optionally with TTA")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--data", help="data source (default: the one it was trained on)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--tta", choices=["none", "flip", "10crop"], default="none",
                   help="average the softmax over mirrored views, or the ten patches (the notes)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args) -> int:
    threads_sleep_when_idle()
    from ..training.evaluate import evaluate
    from ..training.inference import load_for_inference

    loaded = load_for_inference(args)
    result = evaluate(loaded["model"], loaded["splits"][args.split], loaded["rt"], loaded["mean"],
                      loaded["std"], args.batch_size, tta=args.tta)
    result = {"checkpoint": str(args.checkpoint), "data": loaded["data"].name, "split": args.split,
              "tta": args.tta, "top1": result["acc"], "top5": result["top5"],
              "loss": result["loss"], "images": result["n"]}
    if args.json:
        print(dumps(result))   # strict JSON: a diverged checkpoint's NaN loss is null
    elif result["images"] == 0:
        print(f"the {args.split} split of {result['data']} is empty")
    else:
        print(f"{args.split} ({result['data']}, {result['images']} images, tta {args.tta}): "
              f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  loss {result['loss']:.4f}")
    return EXIT_OK
