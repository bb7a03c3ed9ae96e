"""Weights from a file into a compiled spec: our checkpoints by name, anything else
(torchvision's pretrained models above all) by graph order.

`load(model, source)` is `cnndsl train --init-from` and `Spec.compile(weights=...)`.
`source` is one of:

* a checkpoint of `cnndsl train`, or a bare state_dict whose tensor names are mostly the
  spec's: the tensors whose name and shape match are copied, the rest of the spec keeps
  its initial values (a partial copy, reported as such);
* a state_dict in another layout, such as torchvision's (`layer1.0.conv1.weight` where
  cnndsl says `layer1.bottle1.add1.b1.conv1.weight`), or `torchvision:NAME`, the cached
  file of torchvision's `NAME(weights="DEFAULT")`: mapped by graph order, and every
  tensor of the spec must be mapped.

Graph order: both sides are cut into modules (a tensor's module is its name before the
last dot), in order, the spec's in the order its layers compute, the file's as it was
saved (a module's registration order, which in torchvision follows the forward pass);
each module has a signature, its tensors' last name parts and shapes. The two sequences
of modules are aligned as their longest common subsequence of equal signatures, which
leaves out modules on either side that the other lacks (torchvision's auxiliary
classifiers, used in training only); where several alignments are as long, the one
whose paired names share most characters at their ends wins (GoogLeNet's `fc` and its
`aux1.fc2` have the same shape; the spec's `fc1` goes to `fc`). Shapes must be equal,
but for trailing 1-dimensions: a Linear's (4C, C) weight fits a 1×1 conv's (4C, C, 1, 1).
A BatchNorm's `num_batches_tracked` counter (absent from torchvision's older files) is
copied where the file has it and never required. One layer may be left out: the spec's
last, when the file's classifier differs from it only in the number of outputs (the
notes' transfer learning: the pretrained net with a new head for the new classes); it
keeps its initial weights, and the line says so. Anything else unmapped is an error.

Every zoo spec with a torchvision twin (tests/torchvision_twins.py) maps this way, so
specs declare no name map.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CnnDslError, clip, did_you_mean

TORCHVISION = "torchvision:"
COUNTER = "num_batches_tracked"      # BatchNorm's step counter: copied where present
MAX_ALIGN_CELLS = 4_000_000          # spec modules × file modules aligned (32 MB of scores)
SHOWN = 3                            # names listed in a message


# --- where the weights come from -----------------------------------------------------


def load(model: torch.nn.Module, source: str) -> str:
    """Copy the weights of `source` (a file, or `torchvision:NAME`) into `model`; returns
    a line that says what was copied ("SOURCE: mapped 320 of 320 tensors ...").
    Raises `CnnDslError` for a file that cannot be read, and for weights in another
    layout that leave a tensor of the spec unmapped."""
    from ..training import checkpoint

    source = str(source)
    torchvision = source.startswith(TORCHVISION)
    path = torchvision_file(source[len(TORCHVISION):]) if torchvision else Path(source)
    shown = f"{source} ({path})" if torchvision else str(path)
    weights, ours = checkpoint.read_weights(path)
    if torchvision or not (ours or _names_are_ours(weights, model)):
        mapping = map_by_graph_order(weights, model)
        mapping.refuse_if_partial(shown)
        _copy(model, weights, mapping.pairs)
        return f"{shown}: {mapping.summary()}"
    own = model.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return (f"{shown}: loaded {len(matching)} of {len(own)} tensors "
            f"({len(weights) - len(matching)} in the file did not match by name and shape)")


def _names_are_ours(weights: dict, model: torch.nn.Module) -> bool:
    """A bare state_dict is taken by name when at least half of its tensors have a name of
    the spec's (a state_dict of a cnndsl net, perhaps of another spec); fewer, and it is
    in another layout (torchvision's ResNets share only `conv1.*` and `bn1.*`)."""
    own = model.state_dict()
    return 2 * sum(k in own for k in weights) >= len(weights)


def torchvision_file(name: str) -> Path:
    """The cached file of torchvision's weights for model `name` (its DEFAULT weights
    first), in `torch.hub.get_dir()/checkpoints`; never downloads."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise CnnDslError(f"torchvision:NAME takes the name of a torchvision model, such as "
                          f"resnet50; '{clip(name)}' is not one")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    known = _torchvision_file_names(name)
    if known is not None:
        found = [folder / f for f in known if (folder / f).is_file()]
        looked = f"for {', '.join(known)}"
    else:  # no torchvision here: its files are named NAME-HASH.pth
        found = sorted(p for p in folder.glob(f"{name}-*.pth") if p.is_file())
        looked = f"for {name}-*.pth"
        if len(found) > 1:
            raise CnnDslError(f"{TORCHVISION}{name}: {len(found)} cached files in {folder} "
                              f"({', '.join(p.name for p in found[:SHOWN])}): give the path "
                              "of the one you mean instead")
    if not found:
        raise CnnDslError(
            f"{TORCHVISION}{name}: no cached weights in {folder} (looked {looked}); "
            f"on a machine with network, python -c \"import torchvision; "
            f"torchvision.models.{name}(weights='DEFAULT')\" puts them there (TORCH_HOME "
            "moves the folder), or give the path of a .pth file instead")
    return found[0]


def _torchvision_file_names(name: str) -> list[str] | None:
    """The file names of torchvision's weights for `name`, DEFAULT first; None when
    torchvision cannot be imported (then the cache is searched by name)."""
    try:
        from torchvision import models
    except Exception:   # not installed, or built for another torch: look by file name
        return None
    try:
        enum = models.get_model_weights(name)
    except (ValueError, KeyError):
        hint = did_you_mean(name, models.list_models())
        raise CnnDslError(f"{TORCHVISION}{name}: torchvision has no model '{name}'{hint}") from None
    ordered = [enum.DEFAULT, *(w for w in enum if w is not enum.DEFAULT)]
    return list(dict.fromkeys(w.url.rsplit("/", 1)[-1] for w in ordered))


# --- graph order ---------------------------------------------------------------------


@dataclass
class _Module:
    name: str
    tensors: dict                 # last name part → tensor

    @property
    def signature(self) -> tuple:
        return tuple((leaf, _squeezed(t.shape)) for leaf, t in self.tensors.items() if leaf != COUNTER)


def _squeezed(shape) -> tuple:
    """The shape less its trailing 1s: (64, 32, 1, 1) and (64, 32) are one signature."""
    dims = list(shape)
    while dims and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


@dataclass
class Mapping:
    """What a foreign state_dict gives the spec: (file name, spec name) pairs, in order."""
    pairs: list = field(default_factory=list)
    spec_total: int = 0
    reshaped: list = field(default_factory=list)    # (file name, its shape, spec shape)
    missing: list = field(default_factory=list)     # (spec name, shape): nothing mapped
    unused: list = field(default_factory=list)      # file names mapped to nothing
    counters_kept: int = 0                          # spec counters the file lacks
    new_head: tuple | None = None                   # (spec layer, its outputs, file's, its)

    def summary(self) -> str:
        mapped = len(self.pairs)
        example = next(((a, b) for a, b in self.pairs if a != b), self.pairs[0] if self.pairs else None)
        text = f"mapped {mapped} of {self.spec_total} tensors by graph order"
        if example:
            text += f" (e.g. {clip(example[0])} → {clip(example[1])})"
        if self.reshaped:
            name, old, new = self.reshaped[0]
            text += (f"; {len(self.reshaped)} reshaped, differing only in trailing 1-dims "
                     f"(e.g. {clip(name)} {_shape(old)} → {_shape(new)})")
        if self.new_head:
            mine, n, theirs, m = self.new_head
            text += (f"; {clip(mine)} keeps its initial weights: a new head of {n:,} outputs "
                     f"where the file's {clip(theirs)} has {m:,}")
        if self.counters_kept:
            text += f"; {self.counters_kept} {COUNTER} counters kept (the file has none)"
        text += f"; {len(self.unused)} left unused"
        if self.unused:
            text += f" ({_names(self.unused)})"
        return text

    def refuse_if_partial(self, shown: str) -> None:
        if not self.missing:
            return
        first = ", ".join(f"{clip(n)} {_shape(s)}" for n, s in self.missing[:SHOWN])
        raise CnnDslError(
            f"{shown}: {len(self.missing)} of the spec's {self.spec_total} tensors have "
            f"no match by graph order (first: {first}); {len(self.unused)} of the "
            f"file's tensors are left over ({_names(self.unused) or 'none'}): these are not "
            "this network's weights")


def _names(names: list) -> str:
    more = f", … {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(clip(n) for n in names[:SHOWN]) + more


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def map_by_graph_order(weights: dict, model: torch.nn.Module) -> Mapping:
    """Pair the tensors of `weights` (any layout) with the model's, module by module (see
    the module's docstring). A module's own tensors in the file are taken as coming after
    its children's (see `_own_tensors_after_children`); the mapping names the file's."""
    moved, renamed = _own_tensors_after_children(weights)
    mapping = _map_modules(moved, model)
    back = lambda name: renamed.get(name, name)   # noqa: E731
    mapping.pairs = [(back(src), dst) for src, dst in mapping.pairs]
    mapping.reshaped = [(back(src), old, new) for src, old, new in mapping.reshaped]
    unused = {back(u) for u in mapping.unused}
    mapping.unused = [k for k in weights if k in unused]
    return mapping


def _own_tensors_after_children(tensors: dict) -> tuple[dict, dict]:
    """A module's own tensors placed after its children's, each named as a one-tensor
    module of its own (`features.1.0.layer_scale` → `features.1.0.layer_scale.weight`):
    ConvNeXt's CNBlock registers `layer_scale` before its `block` but multiplies by it
    after, where the spec's SCALE is, and SCALE keeps its factor as `weight`. Returns the
    reordered tensors and a map from each new name to the file's."""
    ancestors = set()
    for key in tensors:
        parts = key.split(".")[:-2]
        ancestors.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    out, renamed, held = {}, {}, []    # held: own tensors waiting for their subtree to end

    def release(own: str) -> None:
        renamed[own + ".weight"] = own
        out[own + ".weight"] = tensors[own]

    for key, t in tensors.items():
        owner = key.rpartition(".")[0]
        while held and not owner.startswith(held[-1][0] + "."):   # that subtree has ended
            release(held.pop()[1])
        if owner in ancestors:
            held.append((owner, key))
        else:
            out[key] = t
    for _, own in reversed(held):
        release(own)
    return out, renamed


def _map_modules(weights: dict, model: torch.nn.Module) -> Mapping:
    spec = _modules(_in_graph_order(model))
    file = _modules(weights)
    common = {m.signature for m in spec} & {m.signature for m in file}
    a = [m for m in spec if m.signature in common]    # the rest can match nothing
    b = [k for k, m in enumerate(file) if m.signature in common]
    result = Mapping(spec_total=sum(len(m.tensors) for m in spec))
    paired_file, paired_spec = set(), set()
    aligned = _align(a, [file[k] for k in b])
    for i, j in aligned:
        mine, theirs = a[i], file[b[j]]
        for leaf, t in mine.tensors.items():
            paired_spec.add(f"{mine.name}.{leaf}")
            if leaf not in theirs.tensors:       # a counter the file lacks
                result.counters_kept += 1
                continue
            src = f"{theirs.name}.{leaf}" if theirs.name else leaf
            result.pairs.append((src, f"{mine.name}.{leaf}"))
            paired_file.add(src)
            if theirs.tensors[leaf].shape != t.shape:
                result.reshaped.append((src, tuple(theirs.tensors[leaf].shape), tuple(t.shape)))
    result.missing = [(f"{m.name}.{leaf}", tuple(t.shape)) for m in spec
                      for leaf, t in m.tensors.items() if f"{m.name}.{leaf}" not in paired_spec]
    result.unused = [k for k in weights if k not in paired_file]
    if spec and result.missing:
        _take_new_head(result, spec[-1], file[b[aligned[-1][1]] + 1 if aligned else 0:])
    return result


def _take_new_head(result: Mapping, head: _Module, after: list[_Module]) -> None:
    """The notes' transfer learning gives the net a new classifier: when all that is left
    unmapped is the spec's last layer, and one of the file's modules after everything
    mapped (the last such: the file's own classifier) differs from it only in the number
    of outputs, that layer keeps its initial weights, and the mapping is complete."""
    if {name for name, _ in result.missing} != {f"{head.name}.{leaf}" for leaf in head.tensors}:
        return
    for theirs in reversed(after):
        if _differ_in_outputs_only(head, theirs):
            result.missing = []
            result.new_head = (head.name, _outputs(head), theirs.name, _outputs(theirs))
            return


def _differ_in_outputs_only(mine: _Module, theirs: _Module) -> bool:
    leaves = [leaf for leaf in mine.tensors if leaf != COUNTER]
    return leaves == [leaf for leaf in theirs.tensors if leaf != COUNTER] and all(
        mine.tensors[k].dim() >= 1 and theirs.tensors[k].dim() >= 1
        and _squeezed(mine.tensors[k].shape[1:]) == _squeezed(theirs.tensors[k].shape[1:])
        for k in leaves)


def _outputs(module: _Module) -> int:
    return next(iter(module.tensors.values())).shape[0]


def _in_graph_order(model: torch.nn.Module) -> dict:
    """The model's state_dict in the order its layers compute: a GraphModule's state_dict
    follows its module tree (`gap1` before `layer1.*`), its graph the forward pass."""
    own = model.state_dict()
    graph = getattr(model, "graph", None)
    if graph is None:
        return own
    rank = {node.target: i for i, node in enumerate(graph.nodes) if node.op == "call_module"}

    def position(key: str) -> int:
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):   # the layer that holds this tensor
            owner = ".".join(parts[:cut])
            if owner in rank:
                return rank[owner]
        return len(rank)

    return {k: own[k] for k in sorted(own, key=position)}   # sorted is stable


def _modules(tensors: dict) -> list[_Module]:
    """Consecutive tensors of one module (the name before the last dot), grouped."""
    out: list[_Module] = []
    for key, t in tensors.items():
        owner, _, leaf = key.rpartition(".")
        if out and out[-1].name == owner and leaf not in out[-1].tensors:
            out[-1].tensors[leaf] = t
        else:
            out.append(_Module(owner, {leaf: t}))
    return out


def _align(a: list[_Module], b: list[_Module]) -> list[tuple[int, int]]:
    """Index pairs of the longest common subsequence of equal signatures, ties broken
    toward names that share most characters at their ends."""
    if [m.signature for m in a] == [m.signature for m in b]:
        return [(i, i) for i in range(len(a))]   # one layout: the only complete alignment
    if len(a) * len(b) > MAX_ALIGN_CELLS:
        raise CnnDslError(f"the file's {len(b):,} modules and the spec's {len(a):,} are too many "
                          f"to align by graph order (at most {MAX_ALIGN_CELLS:,} pairs)")
    by_signature: dict[tuple, list[int]] = {}
    for j, m in enumerate(b):
        by_signature.setdefault(m.signature, []).append(j)
    # A match scores more than all name bonuses together, so the count decides first.
    most_bonus = 2 * max((len(m.name) for m in a + b), default=0) + 1
    match = most_bonus * (min(len(a), len(b)) + 1)
    score = torch.zeros(len(a) + 1, len(b) + 1, dtype=torch.int64)
    for i, m in enumerate(a):
        gain = torch.full((len(b),), -1, dtype=torch.int64)   # -1: no match here
        js = by_signature[m.signature]
        gain[js] = torch.tensor([match + _shared_ends(m.name, b[j].name) for j in js])
        best = torch.maximum(score[i, 1:], torch.where(gain >= 0, score[i, :-1] + gain, -1))
        score[i + 1, 1:] = torch.cummax(best, 0).values   # or skip a file module
    pairs, i, j = [], len(a), len(b)
    while i and j:
        if score[i, j] == score[i, j - 1]:
            j -= 1
        elif score[i, j] == score[i - 1, j]:
            i -= 1
        else:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs[::-1]


def _shared_ends(x: str, y: str) -> int:
    """Characters two names share at their start and at their end (`fc1`, `fc`: 2)."""
    start = len(_common_prefix(x, y))
    end = len(_common_prefix(x[start:][::-1], y[start:][::-1]))
    return start + end


def _common_prefix(x: str, y: str) -> str:
    n = 0
    for p, q in zip(x, y):
        if p != q:
            break
        n += 1
    return x[:n]


def _copy(model: torch.nn.Module, weights: dict, pairs: list) -> None:
    own = model.state_dict()
    with torch.no_grad():
        for src, dst in pairs:
            own[dst].copy_(weights[src].reshape(own[dst].shape))
