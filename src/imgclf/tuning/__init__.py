"""Hyperparameter search on Optuna: `imgclf tune SPACE.yaml --data ...` (see tuner.py).

    space.py, params.py    the space file: base config, searched parameters, budget, sampler, pruner
    storage.py             the Optuna storage (SQLite or PostgreSQL) and the study lock
    queue.py               the study's trial queue: enqueue the grid, fail dead trials, claim
    sampling.py            samplers and pruners
    objectives.py          what a trial runs (training by default) and what it is given
    worker.py              the worker loop; trial_process.py: a trial in a process of its own
    results.py             counts, progress, trials table, best config, plots, the test set
    tuner.py               tune(): one run, start to results; cli.py: `imgclf tune`

The public names below load on first use, so `imgclf --help` does not import the whole package.
"""

_LAZY = {
    "tune": "tuner", "TuneResult": "tuner", "print_summary": "tuner",
    "read_space": "space", "space_from_dict": "space", "example_space": "space", "Space": "space",
    "Param": "params",
    "TrialContext": "objectives", "train_objective": "objectives", "resolve_objective": "objectives",
    "run_worker": "worker",
    "open_storage": "storage", "StudyLock": "storage", "StorageError": "storage",
    "open_study": "queue",
    "markdown_table": "results", "write_results": "results",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
