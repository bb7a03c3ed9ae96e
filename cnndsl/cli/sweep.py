"""`cnndsl sweep`: train a family's members with Optuna and find the best (training.sweep)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import CnnDslError
from ..training.settings import add_flags   # torch-free
from .analyze import _bytes, _count, _positive, add_family_flags
from .common import EXIT_INTERRUPTED, EXIT_OK, threads_sleep_when_idle
from .train import CONFIG_FLAGS

DEFAULT_TRIALS = 20


def add_parser(commands):
    p = commands.add_parser(
        "sweep", help="train a family's members (Optuna: exhaustive or TPE, successive halving) "
                      "and find the best",
        description="Train the members of FAMILY that survive the static analysis, each once: "
                    "all of them when there are at most --trials, else --trials of them chosen "
                    "by TPE; successive halving stops poor ones early. Rerun the same command "
                    "to continue a sweep. Needs the `sweep` extra: pip install 'cnndsl[sweep]'.")
    p.add_argument("spec", metavar="FAMILY", help="a family: a .yaml/.cnn file, a zoo name "
                                                  "(families/notes), or inline DSL text with --set")
    p.add_argument("--trials", type=_positive, default=DEFAULT_TRIALS, metavar="N",
                   help=f"members to train in the whole study (default {DEFAULT_TRIALS})")
    p.add_argument("--out", metavar="DIR", help="where the study, the trials and the results go "
                                                "(default runs/<family name>_sweep)")
    p.add_argument("--storage", metavar="URL",
                   help="an Optuna database URL shared by several machines running the same "
                        "command (default sqlite:///DIR/study.db)")
    add_flags(p)   # --data ... --seed: the settings of `cnndsl train`, for every trial
    family = p.add_argument_group("families", "narrow the family and prune members statically, "
                                              "as `cnndsl analyze` does")
    add_family_flags(family)
    family.add_argument("--max-params", type=_count, metavar="N",
                        help="never train members with more parameters (5M, 500k)")
    family.add_argument("--max-macs", type=_count, metavar="N", help="never train members with more MACs")
    family.add_argument("--max-memory", type=_bytes, metavar="BYTES",
                        help="never train members whose training-memory estimate is larger")
    return p


def run(args) -> int:
    threads_sleep_when_idle()
    from ..training import sweep

    sweep.require_optuna()   # before any work: the one-line message when it is missing
    from ..analysis.family import Limits, analyze_family, summary_lines
    from ..lang.spec import resolve
    from ..training import rundir
    from ..training.loop import train
    from ..training.settings import make_config

    spec = resolve(args.spec).with_values(args.set)
    _refuse_single(spec, args.spec)
    flags = {name: getattr(args, name) for name in CONFIG_FLAGS}
    config = make_config(spec, flags)   # for the memory estimate and to check the flags
    limits = Limits(args.max_params, args.max_macs, args.max_memory)
    result = analyze_family(spec, strict=config.strict, batch=config.batch_size,
                            optimizer=config.optimizer, limits=limits)
    for line in summary_lines(result):
        print(line)
    if not result.survivors():
        raise CnnDslError(f"every member of {spec.name} is pruned statically, nothing to train: "
                          + "; ".join(f"{len(m):,} {reason}" for reason, m in _reasons(result)))
    out = Path(args.out) if args.out else rundir.default_out(f"{spec.name}_sweep")
    with rundir.claim(out):
        job = sweep.Sweep(spec, result, flags, out, args.trials, limits, storage=args.storage)
        mode = ("exhaustive: every one" if job.exhaustive else
                f"sampled: {args.trials} of them, by TPE")
        print(f"sweep: {len(job.candidates):,} candidates ({mode}); successive halving over "
              f"{config.epochs} epochs; study {job.study_name()} in {args.storage or out / 'study.db'}")
        try:
            job.run(config.seed, train)
        except KeyboardInterrupt:
            print(f"interrupted: rerun the same command to continue the sweep in {out}",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"results: {out / 'leaderboard.csv'}, {out / 'pareto.png'}, {out / 'best'}")
    return EXIT_OK


def _reasons(result):
    from ..analysis.family import PRUNED

    return [(PRUNED[key], members) for key, members in result.pruned().items()]


def _refuse_single(spec, argument: str) -> None:
    """A single network (or a family narrowed to one member) has nothing to sweep."""
    from ..lang import family

    if spec.is_family and family.member_count(
            family.variables(spec.program, spec.declared).values()) > 1:
        return
    raise CnnDslError(f"{argument} is a single network, not a family: train it with "
                      f"`cnndsl train {argument}`; a sweep needs variables (`family:`, "
                      f"--set N=0..3, or x?)")
