"""
The meta-learning tasks, one file each: its episode builder beside its head, behind the
interface in tasks/common.py. A fourth task is one new file here, tasks/NAME.py with a
TASK = YourClass line, and its row in config.TASK_DEFAULTS; nothing else changes.
"""
import importlib


def make(a, data_dir, dmeta, train_tok, val_tok, tok=None):
    """The task --task names (tasks/<name>.py), its episode index built over both splits; tok:
    the run's tokenizer, when the caller has one already."""
    return importlib.import_module(f"tasks.{a.task}").TASK(a, data_dir, dmeta, train_tok, val_tok, tok)
