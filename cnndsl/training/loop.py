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

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..analysis.result import OPTIMIZER_STATES
from ..backends.torch_fx import build_module
from ..errors import CnnDslError, did_you_mean
from ..graph import shape_text
from . import checkpoint, limits, logs, rundir, throughput
from .augment import build_augment
from .curves import LINE_LIMIT, READ_LIMIT as METRICS_LIMIT, parsed_record, skip_line
from .data import load_data
from .splits import split_stats
from .evaluate import evaluate
from .optim import lr_at, make_optimizer
from .progress import Reporter, _epoch_line
from .runtime import Runtime, derive_seed, start_runtime, stop_runtime, worker_count
from .settings import Config


class Diverged(CnnDslError):
    """The loss became NaN or infinite: stop, keeping the last good checkpoint."""


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
    logs: logs.RunLogs | None = None     # metrics.csv, TensorBoard (rank 0 only)
    on_epoch: object = None              # train()'s hook: called after each epoch is saved


def train(spec, config: Config, out: str | Path, resume: dict | None = None,
          on_epoch=None) -> dict:
    """Train `spec` as `config` says, writing into `out`; `resume` is a checkpoint to continue.

    `on_epoch(epoch, metrics)`, if given, is called after each epoch's metrics line and
    checkpoints are written (`epoch` counts from 1; `metrics` is that epoch's record);
    whatever it raises stops the run there and goes to the caller (`cnndsl sweep` stops
    a trial that successive halving prunes this way).

    Returns the summary (also written to out/summary.json).
    """
    rt = start_runtime(config)
    run = Run(spec, config, Path(out), rt, report=Reporter(rt.is_main), on_epoch=on_epoch)
    try:
        return _train(run, resume)
    finally:
        if run.logs is not None:
            run.logs.close()
        run.report.close()
        stop_runtime(rt)


def _train(run: Run, resume: dict | None) -> dict:
    c, rt = run.config, run.rt
    torch.manual_seed(c.seed)
    if rt.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        logs.require(c.tensorboard)   # a missing tensorboard package is said before any work

    # --- data -------------------------------------------------------------------------
    run.analysis = analysis = run.spec.analyze(strict=c.strict)
    analysis.raise_for_errors()
    # Refuse a net too large for this machine before torch tries to allocate it.
    limits.check_memory(analysis, optimizer_states=OPTIMIZER_STATES[c.optimizer],
                        device=rt.device)
    run.data = data = load_data(c.data, analysis.input_shape, val_fraction=c.val_fraction,
                                seed=c.seed, limit=c.limit, cache=c.cache,
                                workers=worker_count(c.workers), augment=c.augment,
                                skip_bad=c.skip_bad_images,
                                # Every rank reads (and, atomically, may write) the cached
                                # index: indexing ImageNet once per process would cost minutes.
                                index_dir=run.out)
    _check_classes(analysis, data)
    # "Center (subtract mean from) your data" (the notes): per-channel mean and std of
    # the training images, applied after augmentation and saved with the model.
    run.mean, run.std = (split_stats(data.train, seed=c.seed) if resume is None else
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
    run.steps_per_epoch = len(epoch_batches(len(data.train), c.batch_size, rt.world))
    if resume is not None:
        _restore(run, resume)
    truncate_metrics(run.out / rundir.METRICS_NAME, run.epoch, rt, say=run.report.line)
    if resume is None and rt.is_main:
        # --overwrite: the old run's files go now that this one can start (data and model
        # are ready), so the folder never mixes the old checkpoints with new metrics.
        rundir.remove_outputs(run.out)
    if rt.is_main:   # metrics.csv and TensorBoard continue from metrics.jsonl as cut back
        run.logs = logs.RunLogs(run.out, c.tensorboard, run.epoch, say=run.report.line)
    _announce(run, frozen)

    # --- the loop: train an epoch, validate, log, checkpoint --------------------------
    for epoch in range(run.epoch, c.epochs):
        started = time.perf_counter()
        stats = train_epoch(run, epoch)
        val = evaluate(run.raw_model, data.val, rt, run.mean, run.std, c.batch_size)
        _check_finite(run, epoch, val, stats["lr"])
        seconds = time.perf_counter() - started
        metrics = {"epoch": epoch + 1, "train_loss": stats["loss"], "train_acc": stats["acc"],
                   "val_loss": val["loss"], "val_acc": val["acc"], "lr": stats["lr"],
                   "seconds": round(seconds, 3),
                   "images_per_s": round(stats["images"] / stats["seconds"], 1),
                   **_speed(run, stats["images"], stats["seconds"]),
                   "data_wait": round(stats["data_wait"] / max(stats["seconds"], 1e-9), 4)}
        run.elapsed = {"seconds": run.elapsed["seconds"] + seconds,
                       "train_seconds": run.elapsed["train_seconds"] + stats["seconds"],
                       "images": run.elapsed["images"] + stats["images"]}
        run.epoch = epoch + 1
        _end_epoch(run, metrics)
        if run.on_epoch is not None:
            run.on_epoch(run.epoch, metrics)

    # --- test -------------------------------------------------------------------------
    return _finish(run)


def _speed(run: Run, images: int, seconds: float) -> dict:
    """Achieved model TFLOP/s (6 × MACs per image: forward and backward) and, on a GPU
    whose bf16 peak is known, MFU (see throughput.py). None where unknown."""
    tflops = throughput.train_tflops(run.analysis.totals()["macs"], images, seconds)
    share = throughput.mfu(tflops, throughput.peak_tflops(run.rt.device_name))
    return {"train_tflops": None if tflops is None else float(f"{tflops:.4g}"),   # 4 digits
            "mfu": None if share is None else round(share, 4)}


def _check_classes(analysis, data) -> None:
    shape, k = analysis.output_shape, data.num_classes
    if shape is None or len(shape) != 1 or shape[0] < k:
        out = shape_text(shape) if shape else "nothing"
        raise CnnDslError(f"the network's output is {out}, but '{data.name}' has {k} classes: "
                          f"end the net in FC-{k}", analysis.graph.nodes[analysis.output]["span"])


def _place_data(run: Run) -> None:
    """Keep a small data set on the GPU (no copy per step); else batches are copied pinned."""
    d, rt = run.data, run.rt
    run.mean = run.mean.to(rt.device).view(1, -1, 1, 1)
    run.std = run.std.to(rt.device).view(1, -1, 1, 1)
    if rt.device.type == "cuda" and 0 < d.train.nbytes < 2 ** 31:
        d.train.to(rt.device)


def _init_from(model, source: str, report) -> None:
    """Transfer learning (the notes): our checkpoint's weights wherever names and shapes
    match, or another layout's (`torchvision:resnet50`, a torchvision .pth) by graph order."""
    from ..backends import weights

    report.line(f"init-from {weights.load(model, source)}")


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
    batches = epoch_batches(len(d.train), c.batch_size, rt.world, order)
    mine = [idx[rt.rank::rt.world] for idx in batches]   # this process's share of each
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)   # loss·n, correct, n
    check_every = 1 if rt.device.type == "cpu" else 20   # .item() waits for the GPU
    run.report.start_epoch(epoch + 1, c.epochs, len(batches))
    started = time.perf_counter()
    waited = 0.0   # seconds spent waiting for the next batch: is the run data-bound?
    loader = d.train.batches(mine, epoch=epoch, train=True)
    for i in range(len(mine)):
        t0 = time.perf_counter()
        xb, yb = next(loader)
        waited += time.perf_counter() - t0
        x = run.augment(d.train.prepare(rt.to_device(xb)), jitter)
        x = rt.layout((x - run.mean) / run.std)
        y = yb.to(rt.device, non_blocking=True)
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
            "seconds": time.perf_counter() - started, "data_wait": waited}


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
        raise _diverged(run, f"the loss became {loss} at epoch {epoch + 1}, step {step}", lr)
    ips = n * run.rt.world / max(time.perf_counter() - started, 1e-9)
    run.report.update(step, loss / max(n, 1), correct / max(n, 1), ips)


def _check_finite(run: Run, epoch: int, val: dict, lr: float) -> None:
    """After an epoch's training: a non-finite validation loss (without a validation split,
    the loss on the first batch of training images), or non-finite weights, stop the run as
    a divergence before anything of this epoch is written. The training loss is computed
    before each step's update, so it cannot show what the epoch's last step did. Every
    process sees the same all-reduced loss and the same weights, so all stop together."""
    what = "validation loss"
    if val["loss"] is None:   # no validation split: the loss on one batch of training images
        b = run.config.batch_size
        val = evaluate(run.raw_model, run.data.train.head(b), run.rt, run.mean, run.std, b)
        what = "loss on the training images"
    if val["loss"] is not None and not math.isfinite(val["loss"]):
        raise _diverged(run, f"the {what} became {val['loss']} after epoch {epoch + 1}", lr)
    with torch.no_grad():
        bad = next((name for name, p in run.raw_model.named_parameters()
                    if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise _diverged(run, f"the weights of '{bad}' became infinite or nan in epoch {epoch + 1}", lr)


def _diverged(run: Run, what: str, lr: float) -> Diverged:
    last = run.out / "last.pt"
    kept = (f"the last good checkpoint is {last} (epoch {run.epoch})" if run.epoch
            else "no checkpoint was written")
    return Diverged(f"training diverged: {what} (lr {lr:.3g}); lower the learning rate; {kept}")


def _end_epoch(run: Run, metrics: dict) -> None:
    """Log the epoch, then write metrics and checkpoints together (Ctrl-C waits for them)."""
    run.report.epoch_line(_epoch_line(metrics, run.config.epochs))
    better = _improved(run.best, metrics)
    if better:
        run.best = better
    if not run.rt.is_main:
        return
    with checkpoint.sigint_deferred():
        with open(run.out / rundir.METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(rundir.dumps(metrics) + "\n")   # NaN would be written as null
            f.flush()
            os.fsync(f.fileno())
        run.logs.write(metrics)   # after metrics.jsonl, from which a resume rebuilds them
        state = checkpoint_state(run)
        # Order: metrics line, best.pt, then last.pt. Killed between the two, best.pt is
        # one epoch ahead of last.pt, never behind it: resuming redoes that epoch and
        # writes the same best.pt again, while last.pt never names a best that best.pt
        # does not hold.
        if better:
            checkpoint.save(run.out / "best.pt", state)
        checkpoint.save(run.out / "last.pt", state)


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
    """Everything to rebuild the model and to resume the run (see checkpoint.py)."""
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
    saved = state["config"].get("optimizer") if isinstance(state["config"], dict) else None
    if saved is not None and saved != run.config.optimizer:
        raise CnnDslError(f"cannot resume with optimizer {run.config.optimizer}: the checkpoint was "
                          f"trained with --optimizer {saved}; resume with --optimizer {saved} to "
                          f"continue it, or start afresh with --overwrite")
    run.raw_model.load_state_dict(state["model"])
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CnnDslError(f"cannot resume: the optimiser state does not fit ({e})") from None
    run.epoch, run.best, run.elapsed = int(state["epoch"]), state["best"], dict(state["elapsed"])
    torch.set_rng_state(state["rng"]["torch"])
    if run.rt.device.type == "cuda" and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def truncate_metrics(path: Path, epoch: int, rt: Runtime, say=None) -> None:
    """Keep only the records of epochs 1..epoch: those after the checkpoint are redone.

    A line that is not such a record (a torn last line after kill -9, garbage, an epoch
    out of order) is dropped. The file is read in bounded pieces, at most METRICS_LIMIT
    bytes and LINE_LIMIT per line, and only until the record of `epoch`, never whole.
    """
    if not rt.is_main or not path.exists():
        return
    try:
        kept, changed, note = _read_metrics(path, epoch)
    except OSError as e:
        raise CnnDslError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    if note and say:
        say(note)
    if changed:
        text = "".join(kept)
        checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def _read_metrics(path: Path, epoch: int) -> tuple[list[str], bool, str | None]:
    """(the lines to keep, whether the file must be rewritten, a note for the log)."""
    kept, changed, last, budget = [], False, 0, METRICS_LIMIT
    with open(path, "rb") as f:
        while last < epoch:
            if budget <= 0:
                if f.read(1):
                    return kept, True, (f"{path}: read only its first {METRICS_LIMIT / 2 ** 20:g} MiB; "
                                        f"kept the records of {len(kept)} of {epoch} epochs")
                break
            line = f.readline(min(LINE_LIMIT + 1, budget))
            if not line:
                break
            budget -= len(line)
            if len(line) > LINE_LIMIT and not line.endswith(b"\n"):   # overlong: no record
                budget -= skip_line(f, budget)
                changed = True
                continue
            record = _epoch_record(line, last, epoch)
            if record is None:
                changed = True
                continue
            text = rundir.dumps(record) + "\n"   # also turns an old file's NaN into null
            changed |= text.encode() != line
            kept.append(text)
            last = record["epoch"]
        changed |= bool(f.read(1))   # the lines of epochs after the checkpoint
    return kept, changed, None


def _epoch_record(line: bytes, after: int, epoch: int) -> dict | None:
    """The line's record if it is one of an epoch in after+1..epoch, else None."""
    record = parsed_record(line)
    return record if record is not None and after < record["epoch"] <= epoch else None


def _finish(run: Run) -> dict:
    d, totals = run.data, run.analysis.totals()
    test = evaluate(run.raw_model, d.test, run.rt, run.mean, run.std, run.config.batch_size)
    e = run.elapsed
    summary = {
        "spec": run.spec.name, "data": d.name, "test_acc": test["acc"], "test_loss": test["loss"],
        "epochs": run.epoch, "seconds": round(e["seconds"], 2),
        "images_per_s": round(e["images"] / e["train_seconds"], 1) if e["train_seconds"] else None,
        "params": totals["params"], "macs": totals["macs"],
        **_speed(run, e["images"], e["train_seconds"]),
        "best_val_acc": run.best["value"] if run.best and run.best["metric"] == "val_acc" else None,
        "best_epoch": run.best["epoch"] if run.best else None,
        "device": str(run.rt.device.type), "world_size": run.rt.world,
        "train_images": len(d.train), "val_images": len(d.val), "test_images": test["n"],
    }
    if d.num_classes > 5:
        summary["test_top5"] = test["top5"]
    skipped = d.skipped_files()
    summary["skipped_images"] = len(skipped)   # --skip-bad-images: files that could not be decoded
    if skipped and run.rt.is_main:
        run.report.line(f"skipped {len(skipped)} image{'s' * (len(skipped) > 1)} that could not be "
                        f"decoded (each replaced by another of its batch); first: {skipped[0]}")
    if run.rt.is_main:
        text = rundir.dumps(summary, indent=2) + "\n"   # NaN / inf as null
        checkpoint.atomic_write(run.out / "summary.json", lambda f: f.write(text.encode()))
        if test["n"]:
            top5 = f" (top-5 {test['top5']:.4f})" if "test_top5" in summary else ""
            result = f"test acc {test['acc']:.4f}{top5} on {test['n']} images"
        else:   # too few images for a test split (synthetic:4, a folder of one image)
            result = "the test split is empty: no test accuracy (test_acc null)"
        run.report.line(f"{result} | {e['seconds']:.1f} s | {run.out / 'summary.json'}")
    return summary


def _announce(run: Run, frozen: list[str]) -> None:
    c, d, rt, t = run.config, run.data, run.rt, run.analysis.totals()
    where = f"{rt.device.type}" + (f" ×{rt.world} (DDP)" if rt.world > 1 else "")
    extras = [s for s, on in (("bf16", rt.bf16), ("channels_last", rt.channels_last),
                              ("compiled", c.compile)) if on]
    run.report.line(f"{run.spec.name}: {t['params']:,} params, {t['macs']:,} MACs | {d.name}: "
                    f"{len(d.train)} train / {len(d.val)} val / {len(d.test)} test | "
                    f"{where}{' ' + ', '.join(extras) if extras else ''} | {run.out}")
    run.report.line(d.how)
    if frozen:
        run.report.line(f"frozen: {len(frozen)} layers, {frozen[0]} … {frozen[-1]}")
    if run.epoch:
        run.report.line(f"resuming after epoch {run.epoch} from {run.out / 'last.pt'}")
