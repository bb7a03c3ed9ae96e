"""`cnndsl train`: its flags, and the glue to cnndsl.training (torch is imported only when it runs)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import CnnDslError
from ..training.settings import SETTINGS, add_flags   # torch-free: `cnndsl --help` stays light
from .analyze import add_family_flags
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, threads_sleep_when_idle

# The flags that set a Config field (argparse dest = field), from the table of settings;
# None means "not given".
CONFIG_FLAGS = tuple(s.name for s in SETTINGS if s.flag)


def add_parser(commands):
    p = commands.add_parser("train", help="compile a spec and train it (CPU, GPU, torchrun for DDP)",
                            description="Train SPEC. Settings: defaults, then the spec's `train:` "
                                        "section, then these flags.")
    p.add_argument("spec", help="a .yaml/.yml/.cnn file, a zoo name (lenet5), or inline DSL text")
    add_flags(p)   # --data ... --strict: one per setting of cnndsl/training/settings.py
    p.add_argument("--out", metavar="DIR", help="where checkpoints and metrics go (default runs/<spec name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from DIR/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start afresh even though DIR holds a run")
    add_family_flags(p)   # a family trains one member: every variable with one value
    return p


def run(args) -> int:
    threads_sleep_when_idle()
    from ..lang.spec import resolve
    from ..training import rundir
    from ..training.loop import Diverged, train
    from ..training.runtime import process_env
    from ..training.settings import make_config

    spec = resolve(args.spec).with_values(args.set)
    refuse_family(spec, args.spec)
    # The default folder comes from the spec's name, cleaned: always runs/<one plain name>.
    out = Path(args.out) if args.out else rundir.default_out(spec.name)
    flags = {name: getattr(args, name) for name in CONFIG_FLAGS}
    _, rank, _ = process_env()
    if args.resume and not (out / "last.pt").is_file():
        raise CnnDslError(f"nothing to resume: no checkpoint at {out / 'last.pt'}")
    # Before any work: the folder is created, probed for writing and locked for the run's
    # life (a second run into it is refused); only rank 0 writes files, so only it claims.
    with rundir.claim(out, lock=rank == 0):
        state = _resume_state(out, spec, args.optimizer) if args.resume else None
        if state is None:
            _refuse_to_overwrite(out, args.overwrite)
        config = make_config(spec, flags, base=state["config"] if state else None)
        try:
            train(spec, config, out, resume=state)
        except Diverged as e:
            print(e, file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            import shlex

            last = out / "last.pt"
            where = (f"the last checkpoint is {last}; continue with: cnndsl train "
                     f"{shlex.quote(args.spec)} --out {shlex.quote(str(out))} --resume"
                     if last.exists() else "no checkpoint was written")
            print(f"interrupted: {where}", file=sys.stderr)
            return EXIT_INTERRUPTED
    return EXIT_OK


def refuse_family(spec, argument: str) -> None:
    """A family is many networks; one of them trains: every variable given one value."""
    if not spec.is_family:
        return
    from ..lang import family

    variables = family.variables(spec.program, spec.declared)
    several = family.free(variables)
    if several:
        total = family.member_count(variables.values())
        raise CnnDslError(f"{argument} is a family of {total:,} networks ({family.describe(several)}); "
                          f"train one of them by giving every variable one value, e.g. "
                          f"{family.pick_flags(several)} (`cnndsl analyze {argument}` lists them)")


def _resume_state(out: Path, spec, optimizer: str | None = None) -> dict:
    from ..training import checkpoint

    last = out / "last.pt"
    if not last.exists():
        raise CnnDslError(f"nothing to resume: no checkpoint at {last}")
    state = checkpoint.load(last)
    if state["spec"]["digest"] != spec.digest:
        raise CnnDslError(f"{last} is a checkpoint of spec '{state['spec']['name']}' "
                          f"(sha256 {state['spec']['digest'][:12]}…), not of this spec "
                          f"'{spec.name}' (sha256 {spec.digest[:12]}…): give another --out")
    saved = state["config"].get("optimizer") if isinstance(state["config"], dict) else None
    if optimizer is not None and saved is not None and optimizer != saved:
        # The optimiser's state (momentum, Adam's moments) cannot carry over to another one.
        raise CnnDslError(f"cannot resume {last} with --optimizer {optimizer}: it was trained with "
                          f"--optimizer {saved}; resume without --optimizer (or with --optimizer "
                          f"{saved}) to continue it, or start afresh with --overwrite")
    return state


def _refuse_to_overwrite(out: Path, overwrite: bool) -> None:
    if (out / "last.pt").exists() and not overwrite:
        raise CnnDslError(f"{out} already holds a run ({out / 'last.pt'}): add --resume to continue it, "
                          f"--overwrite to start again, or give another --out")
