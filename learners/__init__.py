"""
The variants of FOMAML, one file each: learners/NAME.py holds one Variant (a meta.Learner)
that overrides the hooks it fills (and lists them in HOOKS), declares its flags (add_flags),
says when the flags select it (active) and checks them (check). meta.py never names one: the
run gets them through make(a), composed into one Learners (below). A reader who skips this folder
has read a complete FOMAML.

    metasgd.py   step_size            first-order Meta-SGD: a learned step size per tensor
    adamw.py     direction, units     an AdamW inner loop
    lowrank.py   reparam, fast_names  the inner loop adapts low-rank deltas of the matrices
    tarp.py      change_model, ...    Meta-Learning the Difference's TARP: shifted matrices
    tams.py      change_model, ...    Meta-Learning the Difference's TAMS: a choice of ops per episode
    reptile.py   outer, flops         Reptile's outer rule

A new variant is one new file here: the flags, the checks and tests/test_contract.py find it.
"""
import importlib
import inspect
from contextlib import ExitStack, contextmanager
from pathlib import Path

from meta import Learner
from plumbing.errors import UserError


class Variant(Learner):
    """What a variant declares besides the hooks it overrides."""
    HOOKS = ()  # the hooks it fills
    DEFAULTS = {}  # defaults it gives shared flags when selected
    ORDER = 0  # variants change the model in (ORDER, name) order
    EXAMPLE = ()  # flags that select it (with --task lm --inner-params top-1), for tests/test_contract.py

    @classmethod
    def add_flags(cls, group):
        """The variant's flags, in its own argparse group."""

    @classmethod
    def active(cls, a):
        """Whether the flags select this variant."""
        return False

    @classmethod
    def check(cls, a):
        """Refuse values of the variant's flags that cannot run (UserError); called on every run."""


def names():
    """Every variant in this folder, by file name, in the order their model changes are made."""
    found = [p.stem for p in Path(__file__).parent.glob("*.py") if p.stem != "__init__"]
    return sorted(found, key=lambda n: (get(n).ORDER, n))


def get(name):
    """The Learner subclass learners/NAME.py defines."""
    module = importlib.import_module(f"learners.{name}")
    found = [c for c in vars(module).values()
             if inspect.isclass(c) and issubclass(c, Variant) and c.__module__ == module.__name__]
    if len(found) != 1:
        raise TypeError(f"learners/{name}.py must define exactly one subclass of learners.Variant (found {len(found)})")
    return found[0]


def classes():
    """{name: its Variant subclass}, in the order of names()."""
    return {n: get(n) for n in names()}


def chosen(a):
    """The Variant subclasses the flags select, in order."""
    return [cls for cls in classes().values() if cls.active(a)]


def add_flags(p):
    for n, cls in classes().items():
        cls.add_flags(p.add_argument_group(f"learner {n}: {cls.__doc__.strip().splitlines()[0]}"))


def check(a):
    """Each variant checks its own flags; two selected variants may not fill the same hook."""
    for cls in classes().values():
        cls.check(a)
    picked = chosen(a)
    for hook in SINGLE:
        fill = [cls for cls in picked if hook in cls.HOOKS]
        if len(fill) > 1:
            raise UserError(f"{' and '.join(cls.__name__ for cls in fill)} both set the inner loop's {hook}; choose one")


def defaults(a):
    """Defaults the selected variants give shared flags (AdamW's inner step size)."""
    out = {}
    for cls in chosen(a):
        out |= cls.DEFAULTS
    return out


def make(a):
    """The run's learner: FOMAML with the variants the flags select."""
    return Learners(a, [cls(a) for cls in chosen(a)])


# ----------------------------------------------------------------------------- composition

CHAINED = ("change_model", "adaptable", "episode", "observe", "report")  # every active variant's, in turn
SINGLE = ("reparam", "fast_names", "learned", "step_size", "units", "direction", "outer", "flops")  # one variant's


class Learners(Learner):
    """The active variants as one Learner: a hook that one of them overrides is its; the hooks
    that change the model, which weights adapt, the episode and the eval report are
    chained through all of them, in the order given. Two variants never fill the same other
    hook (learners.check refuses such flags). The FOMAML run has none."""

    def __init__(self, a, active):
        super().__init__(a)
        self.active = list(active)
        for v in self.active:
            v.owner = self  # a variant's hook may call the others' (Reptile runs the whole inner loop)
        for hook in SINGLE:
            mine = [v for v in self.active if overrides(type(v), hook)]
            if mine:
                setattr(self, hook, getattr(mine[0], hook))

    def change_model(self, model):
        for v in self.active:
            v.change_model(model)

    def adaptable(self, model, names):
        for v in self.active:
            names = v.adaptable(model, names)
        return names

    @contextmanager
    def episode(self, model, ep):
        with ExitStack() as stack:
            for v in self.active:
                ep = stack.enter_context(v.episode(model, ep))
            yield ep

    def observe(self, ep):
        for v in self.active:
            v.observe(ep)

    def report(self):
        row, line = {}, []
        for v in self.active:
            r, text = v.report()
            row |= r
            line += [text] if text else []
        return row, "; ".join(line)


def overrides(cls, hook):
    return getattr(cls, hook) is not getattr(Learner, hook)
