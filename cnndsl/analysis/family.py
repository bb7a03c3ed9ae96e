"""A family of networks analysed member by member: what `cnndsl analyze FAMILY` prints.

Each member (lang.family) is expanded from the spec's syntax tree, parsed once, with its
values, and analysed by the same passes as any network. Members that expand to the same
network (the same layers with the same options, joined the same way: names aside) are one
member; `N=0` with the pool absent, say, is the same network for every M. Members that
cannot work are pruned, each with its reason (`PRUNED`); the others are measured, and the
ones no other member beats on both params and MACs make the Pareto front.

The receptive field of a member is that of the features its head reads: the largest
receptive field of a layer with a C×H×W output that no global layer (FC, GAP) precedes.
An FC sees its whole input, so the net's own output always "sees" everything; what the
notes' rule of thumb asks is whether the convolutional part does.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from . import passes
from .result import Analysis
from ..errors import CnnDslError, Diagnostic
from ..graph import inputs, shape_text
from ..lang import family
from ..lang.expand import DEFAULT_MAX_LAYERS, InputShape, expand, variables_read

# Why a member is pruned, by key; the text is what reports and --json say.
PRUNED = {
    "invalid": "a layer cannot be built",        # expansion: a count, kernel, option out of bounds
    "vanishes": "a layer leaves no output",      # an output side below 1
    "misfit": "a layer does not fit",            # with --strict / fit: strict
    "shape": "shapes do not match",              # joins, groups, a volume after FC, ...
    "not_vector": "the output is not a vector",  # a classifier ends in a flat vector
    "params": "more params than --max-params",
    "macs": "more MACs than --max-macs",
    "memory": "more memory than --max-memory",
}


@dataclass(frozen=True)
class Limits:
    """Members over a limit are pruned; None: no limit. `memory` is the training-memory
    estimate in bytes (weights, gradients, optimiser state, the batch's activations)."""
    params: int | None = None
    macs: int | None = None
    memory: int | None = None


@dataclass
class Member:
    values: dict
    pruned: str | None = None              # a key of PRUNED
    diagnostic: Diagnostic | None = None   # why it was pruned, where
    params: int | None = None
    macs: int | None = None
    flops: int | None = None
    activations: int | None = None         # elements per image
    memory: int | None = None              # the training-memory estimate, bytes
    layers: int | None = None
    rf: tuple[int, int] | None = None      # of the features the head reads
    covers: bool | None = None             # whether that receptive field covers the input
    output: tuple | None = None
    misfits: int = 0                       # layers floored to fit (warnings)
    duplicates: list[dict] = field(default_factory=list)  # members that are this network
    pareto: bool = False

    def to_dict(self) -> dict:
        """One line of `--json` (keys may be added, never renamed)."""
        d = self.diagnostic
        where = f"{d.span.source.display_name}:{d.span.line}:{d.span.col}" if d and d.span else None
        return {
            "vars": self.values, "params": self.params, "macs": self.macs, "flops": self.flops,
            "activations": self.activations,
            "activation_bytes_fp32": None if self.activations is None else 4 * self.activations,
            "training_memory": self.memory, "layers": self.layers,
            "output": list(self.output) if self.output else None,
            "rf": list(self.rf) if self.rf else None, "rf_covers_input": self.covers,
            "pareto": self.pareto, "misfits": self.misfits,
            "pruned": PRUNED[self.pruned] if self.pruned else None,
            "detail": d.message if d else None, "at": where,
            "duplicates": self.duplicates,
        }


@dataclass
class FamilyAnalysis:
    name: str
    variables: dict[str, family.Variable]
    total: int                     # members of the family
    members: list[Member]          # the distinct members analysed, pruned ones too
    input_shape: tuple | None
    sampled: bool = False
    notes: list[Diagnostic] = field(default_factory=list)   # a bare INPUT's default, once

    @property
    def analysed(self) -> int:
        return sum(1 + len(m.duplicates) for m in self.members)

    @property
    def duplicates(self) -> int:
        return sum(len(m.duplicates) for m in self.members)

    def survivors(self) -> list[Member]:
        """The members that work, by MACs, then params."""
        return sorted((m for m in self.members if not m.pruned), key=lambda m: (m.macs, m.params))

    def pruned(self) -> dict[str, list[Member]]:
        """Pruned members by reason (PRUNED's order)."""
        found = {key: [m for m in self.members if m.pruned == key] for key in PRUNED}
        return {key: members for key, members in found.items() if members}

    def summary(self) -> dict:
        """The last line of `--json`."""
        return {"family": self.name, "members": self.total, "analysed": self.analysed,
                "sampled": self.sampled, "distinct": len(self.members),
                "duplicates": self.duplicates, "surviving": len(self.survivors()),
                "pareto": sum(m.pareto for m in self.members),
                "pruned": {PRUNED[k]: len(v) for k, v in self.pruned().items()},
                "variables": {name: v.text() for name, v in self.variables.items()},
                "input": list(self.input_shape) if self.input_shape else None}

    def errors(self) -> list[Diagnostic]:
        """When no member survives: one error per reason, at an example member's fault."""
        if self.survivors() or not self.members:
            return []
        found = []
        for members in self.pruned().values():
            first = members[0]
            d = first.diagnostic
            others = len(members) - 1 + sum(len(m.duplicates) for m in members)
            like = f", and {others:,} other member{'s' * (others != 1)} like it" if others else ""
            note = Diagnostic("note", f"in the member {values_text(first.values)}{like}")
            found.append(Diagnostic("error", d.message, d.span, d.notes + (note,)))
        return found


def values_text(values: dict) -> str:
    return ", ".join(f"{k}={family.value_text(v)}" for k, v in values.items()) or "(no variables)"


def analyze_family(spec, input: tuple[int, int, int] | None = None, strict: bool = False,
                   batch: int = 1, optimizer: str | None = None,
                   max_layers: int = DEFAULT_MAX_LAYERS,
                   max_members: int = family.DEFAULT_MAX_MEMBERS,
                   sample: int | None = None, seed: int = 0,
                   limits: Limits = Limits()) -> FamilyAnalysis:
    """Every member of `spec`'s family (or `sample` of them, drawn with `seed`), analysed.

    A family of more than `max_members` members is refused before any is expanded
    (unless sampled): the count is the product of the variables' numbers of values."""
    from ..training.settings import optimizer_name   # torch-free

    variables = family.variables(spec.program, spec.declared)
    order = list(variables.values())
    total = family.member_count(order)
    _refuse_large(variables, total, sample, max_members)
    given = InputShape(tuple(input), override=True) if input else spec.input
    measure = _Measure(spec.name, strict or spec.fit == "strict", batch,
                       optimizer or optimizer_name(spec.train), limits)
    distinct = _Distinct(spec.program, given, max_layers, measure, list(variables))
    for index in family.member_indices(total, sample, seed):
        distinct.add(family.member_values(order, index))
    mark_pareto([m for m in distinct.members if not m.pruned])
    shape = given.shape if given else distinct.written_input()
    return FamilyAnalysis(spec.name, variables, total, distinct.members, shape,
                          sampled=sample is not None and sample < total, notes=distinct.notes)


class _Distinct:
    """The members analysed so far, each network once: a member is the duplicate of an
    earlier one when its expansion reads the same values (it is then not expanded), or
    when it expands to the same network (it is then not analysed)."""

    def __init__(self, program, given, max_layers: int, measure, names: list[str]):
        self.program, self.given, self.max_layers = program, given, max_layers
        self.measure, self.names = measure, names
        self.members: list[Member] = []
        self.notes: list[Diagnostic] = []          # a bare INPUT's, once
        self.by_reads: dict[tuple, Member] = {}    # the values of the variables read → member
        self.by_network: dict[tuple, Member] = {}  # canonical form → member
        self.memo: dict = {}                       # layer options, from one member to the next

    def add(self, values: dict) -> None:
        try:
            read = variables_read(self.program, values, self.max_layers, self.memo)
        except CnnDslError as e:   # the layer limit
            self.members.append(Member(values, "invalid", e.diagnostics[0]))
            return
        reads = tuple((name, values[name]) for name in self.names if name in read)
        if reads in self.by_reads:
            self.by_reads[reads].duplicates.append(values)
            return
        self.by_reads[reads] = member = self._expanded(values)
        if member.values is values:   # not the same network as an earlier member
            self.members.append(member)

    def _expanded(self, values: dict) -> Member:
        """The member of `values`, or the earlier member that is the same network."""
        try:
            graph = expand(self.program, self.given, self.max_layers, values, self.memo,
                           counted=True)
        except CnnDslError as e:
            return Member(values, "invalid", e.diagnostics[0])
        key = canonical(graph)
        if key in self.by_network:
            self.by_network[key].duplicates.append(values)
            return self.by_network[key]
        self.notes = self.notes or list(graph.graph.get("notes", ()))
        self.by_network[key] = member = self.measure(values, graph)
        return member

    def written_input(self) -> tuple | None:
        """The input shape of the members, when the net writes it (not given outside) and
        no variable changes it."""
        shapes = {tuple(dict(key[0][1]).values()) for key in self.by_network}  # INPUT's opts
        return shapes.pop() if len(shapes) == 1 else None


def _refuse_large(variables: dict, total: int, sample: int | None, max_members: int) -> None:
    if (sample if sample is not None else total) <= max_members:
        return
    counts = " × ".join(f"{v.count:,}" for v in variables.values())
    where = next((v.span or v.use for v in variables.values() if v.span or v.use), None)
    if sample is not None:
        raise CnnDslError(f"--sample {sample:,} is more than --max-members {max_members:,}")
    raise CnnDslError(f"this family has {total:,} members ({counts}: "
                      f"{family.describe(variables)}), more than --max-members {max_members:,}; "
                      f"narrow the values (--set), analyse --sample K of them, or raise "
                      f"--max-members", where)


def canonical(graph) -> tuple:
    """The network a graph computes, names aside: per layer in order, its kind, its
    options, and which layers (by position) it reads."""
    position = {name: i for i, name in enumerate(graph)}
    nodes = graph.nodes
    return tuple((nodes[n]["kind"].name, tuple(nodes[n]["opts"].items()),
                  tuple(position[p] for p in inputs(graph, n))) for n in graph)


class _Measure:
    """One distinct member: the passes, then the reasons to prune it, then its figures."""

    def __init__(self, name: str, strict: bool, batch: int, optimizer: str, limits: Limits):
        self.name, self.strict, self.batch = name, strict, batch
        self.optimizer, self.limits = optimizer, limits

    def __call__(self, values: dict, graph) -> Member:
        # result.analyze_graph's passes, stopping early for a member that cannot work
        passes.resolve_bias(graph)
        diagnostics = passes.infer_shapes(graph, self.strict)
        errors = [d for d in diagnostics if d.severity == "error"]
        if errors:
            return Member(values, _reason(errors[0]), errors[0])
        passes.count_costs(graph)
        passes.receptive_fields(graph)
        analysis = Analysis(self.name, graph, diagnostics, self.batch, self.optimizer)
        totals = analysis.totals()
        output = analysis.output_shape
        member = Member(values, params=totals["params"], macs=totals["macs"],
                        flops=totals["flops"], activations=totals["activation_elements"],
                        memory=totals["memory"]["training_estimate"]["total"],
                        layers=totals["layers"], output=output,
                        misfits=sum(d.severity == "warning" for d in analysis.diagnostics))
        member.rf = feature_rf(graph)
        member.covers = all(r >= n for r, n in zip(member.rf, analysis.input_shape[1:]))
        if len(output) != 1:
            last = graph.nodes[analysis.output]
            member.pruned, member.diagnostic = "not_vector", Diagnostic(
                "error", f"the output is {shape_text(output)}, not a vector: a classifier "
                         f"ends in FC (or GAP -> FLATTEN)", last["span"])
            return member
        return self._limited(member)

    def _limited(self, member: Member) -> Member:
        for key, value, limit, what in (
                ("params", member.params, self.limits.params, "params"),
                ("macs", member.macs, self.limits.macs, "MACs"),
                ("memory", member.memory, self.limits.memory, "bytes of training memory")):
            if limit is not None and value > limit:
                flag = PRUNED[key].split()[-1]   # --max-params, ...
                member.pruned, member.diagnostic = key, Diagnostic(
                    "error", f"{value:,} {what}, more than {flag} {limit:,}")
                return member
        return member


def _reason(error: Diagnostic) -> str:
    """The PRUNED key of an analysis error, from the passes' own wording (analysis.passes:
    `_fit_window` says "leaves no output" and "does not fit"; the rest are shape checks)."""
    if "leaves no output" in error.message:
        return "vanishes"
    if "does not fit" in error.message:
        return "misfit"
    return "shape"


def feature_rf(graph) -> tuple[int, int]:
    """The largest receptive field of a C×H×W output that no global layer precedes
    (a join is after one only when all its inputs are)."""
    after_global: set[str] = set()
    best = (1, 1)
    for name in graph:
        node = graph.nodes[name]
        sources = inputs(graph, name)
        if node["kind"].global_rf or (sources and all(s in after_global for s in sources)):
            after_global.add(name)
        elif len(node["shape"]) == 3:
            best = (max(best[0], node["rf"][0]), max(best[1], node["rf"][1]))
    return best


def mark_pareto(members: list[Member]) -> None:
    """Marks the members no other beats on both params and MACs: none has params ≤ and
    MACs ≤ with one of them <. Members equal in both are all on the front or all off."""
    best_params = None
    ordered = sorted(members, key=lambda m: (m.macs, m.params))
    for _, group in itertools.groupby(ordered, key=lambda m: m.macs):
        group = list(group)
        lowest = group[0].params
        for m in group:
            m.pareto = m.params == lowest and (best_params is None or lowest < best_params)
        best_params = lowest if best_params is None else min(best_params, lowest)


# --- the report -------------------------------------------------------------------------

def family_table(result: FamilyAnalysis):
    """The surviving members by MACs: one row each, `*` on the Pareto front."""
    from .report import LayerTable, human, human_bytes

    shown = f", {shape_text(result.input_shape)} input" if result.input_shape else ""
    table = LayerTable(f"{result.name}: a family of {result.total:,} networks{shown}")
    for name in result.variables:
        table.add_column(name, justify="right")
    for header, justify in (("params", "right"), ("MACs", "right"), ("act. memory", "right"),
                            ("RF", "right"), ("covers", "left"), ("Pareto", "left")):
        table.add_column(header, justify=justify)
    for m in result.survivors():
        rf = f"{m.rf[0]}" if m.rf[0] == m.rf[1] else f"{m.rf[0]}×{m.rf[1]}"
        table.add_row(*(family.value_text(m.values[n]) for n in result.variables),
                      f"{m.params:,}", human(m.macs), human_bytes(4 * m.activations), rf,
                      "yes" if m.covers else "no", "*" if m.pareto else "")
    return table


def summary_lines(result: FamilyAnalysis) -> list[str]:
    """What the table's rows do not say: how many were merged, pruned (and why), kept."""
    sampled = f" (a sample of {result.analysed:,})" if result.sampled else ""
    lines = [f"members: {result.total:,}{sampled} ({family.describe(result.variables)})",
             f"analysed: {result.analysed:,}; the same network as another (merged): "
             f"{result.duplicates:,}; distinct: {len(result.members):,}"]
    pruned = result.pruned()
    total_pruned = sum(len(v) for v in pruned.values())
    lines.append(f"pruned: {total_pruned:,} distinct members" + (":" if pruned else ""))
    for key, members in pruned.items():
        example = members[0]
        where = (f" at {example.diagnostic.span.source.display_name}:"
                 f"{example.diagnostic.span.line}:{example.diagnostic.span.col}"
                 if example.diagnostic.span else "")
        lines.append(f"  {len(members):>6,}  {PRUNED[key]}; e.g. {values_text(example.values)}"
                     f"{where}: {example.diagnostic.message}")
    survivors = result.survivors()
    floored = sum(1 for m in survivors if m.misfits)
    lines.append(f"surviving: {len(survivors):,}; on the Pareto front of params and MACs "
                 f"(*): {sum(m.pareto for m in survivors):,}")
    if floored:
        lines.append(f"{floored:,} surviving members have layers that do not fit and are "
                     f"floored (--strict prunes them)")
    return lines
