"""
The meta-learning tasks, one file each: tasks/NAME.py holds one subclass of tasks.base.Task
and gives `--task NAME`. A fourth task is one new file here; nothing else changes (the flags,
defaults and checks come from the file, and tests/test_contract.py tests it).
"""
import importlib
import inspect
from pathlib import Path

from tasks.base import Task


def names():
    """Every task in this folder, by file name."""
    return sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in ("__init__", "base"))


def get(name):
    """The Task subclass tasks/NAME.py defines."""
    module = importlib.import_module(f"tasks.{name}")
    found = [c for c in vars(module).values()
             if inspect.isclass(c) and issubclass(c, Task) and c is not Task and c.__module__ == module.__name__]
    if len(found) != 1:
        raise TypeError(f"tasks/{name}.py must define exactly one subclass of tasks.base.Task (found {len(found)})")
    return found[0]


def make(a, data_dir, dmeta, train_tok, val_tok, tok=None):
    """The task --task names, its episode index built over both splits; tok: the run's
    tokenizer, when the caller has one already."""
    return get(a.task)(a, data_dir, dmeta, train_tok, val_tok, tok)
