"""A trained checkpoint put to use: its model (whole, or up to one layer) on its data."""
from __future__ import annotations

from pathlib import Path

from ..errors import CnnDslError, did_you_mean


def load_for_inference(args, layer: str | None = None) -> dict:
    """The checkpoint's model (up to `layer`, if given) on its device, and its data."""
    from . import checkpoint
    from .settings import make_config

    check_batch_size(args.batch_size)
    state = checkpoint.load(args.checkpoint)
    spec = checkpoint.spec_of(state, args.checkpoint)
    config = make_config(spec, {"data": args.data, "device": args.device}, base=state["config"])
    analysis = analyzed(spec, config.strict)
    model = model_upto(analysis, spec.name, layer, state, args.checkpoint)
    norm = state["normalize"]
    used = put_to_use(model, analysis, config, (norm["mean"], norm["std"]))
    data = used["data"]
    if data.num_classes > len(state["class_names"]) and layer is None:
        raise CnnDslError(f"'{data.name}' has {data.num_classes} classes; {args.checkpoint} was "
                          f"trained on {len(state['class_names'])}")
    return used


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise CnnDslError(f"--batch-size must be a positive whole number, got {batch_size}")


def analyzed(spec, strict: bool):
    """The spec's analysis, refused with its errors, and refused before torch allocates the
    weights when they would not fit in memory."""
    from .limits import check_memory

    analysis = spec.analyze(strict=strict)
    analysis.raise_for_errors()
    check_memory(analysis, optimizer_states=0)
    return analysis


def put_to_use(model, analysis, config, normalize=None) -> dict:
    """The model in eval mode on the run's device, its data, and the normalisation: the
    checkpoint's (mean, std) when given, else the training split's, as `cnndsl train`
    computes it."""
    import torch

    from .data import load_data
    from .runtime import start_runtime, worker_count
    from .splits import split_stats

    rt = start_runtime(config)
    data = load_data(config.data, analysis.input_shape, val_fraction=config.val_fraction,
                     seed=config.seed, limit=config.limit, cache=config.cache,
                     workers=worker_count(config.workers), augment=config.augment,
                     skip_bad=config.skip_bad_images)
    mean, std = normalize if normalize is not None else split_stats(data.train, seed=config.seed)
    return {"model": model.to(rt.device).eval(), "rt": rt, "data": data,
            "mean": mean.to(rt.device, torch.float32).view(1, -1, 1, 1),
            "std": std.to(rt.device, torch.float32).view(1, -1, 1, 1),
            "splits": {"train": data.train, "val": data.val, "test": data.test},
            "input_shape": analysis.input_shape}


def model_upto(analysis, name: str, layer: str | None, state: dict, where):
    """The network, or its part that ends at `layer` (all that layer depends on), with the
    checkpoint's weights."""
    import networkx as nx

    from ..backends.torch_fx import build_module

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


def activations(loaded: dict, split, batch_size: int, shape):
    """The model's outputs for every image of `split`, in order, on the CPU."""
    import torch

    rt, model, parts = loaded["rt"], loaded["model"], []
    batches = list(torch.arange(len(split)).split(batch_size))
    with torch.no_grad():
        for xb, _ in split.batches(batches):
            x = split.prepare(rt.to_device(xb))
            with rt.autocast():
                parts.append(model(rt.layout((x - loaded["mean"]) / loaded["std"])).float().cpu())
        if not parts:  # an empty split (no validation images): 0 × the layer's shape
            probe = model(rt.images(torch.zeros(1, *shape)))
            return torch.zeros(0, *probe.shape[1:])
    return torch.cat(parts)


def write_features(out: Path, arrays: dict, class_names: list, layer: str) -> None:
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
