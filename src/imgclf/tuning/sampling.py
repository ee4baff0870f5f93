"""How a trial gets its parameters and when it stops early: Optuna samplers and pruners."""

from __future__ import annotations

import warnings

from .space import Space


def make_sampler(space: Space, number: int):
    """A sampler seeded by (space seed, trial number): deterministic whichever worker runs it,
    and different across workers (one shared seed would make every worker sample the same point)."""
    import optuna

    seed = (space.seed * 1_000_003 + number) % 2**31
    if space.sampler == "tpe":
        startup = min(10, max(2, space.budget_trials // 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(space: Space):
    import optuna

    epochs = space.trial_epochs
    if space.pruner == "median":
        # after a few finished trials, a trial below the median at the same epoch stops (from epoch 1;
        # never at its last epoch, see TrialContext.report)
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, space.budget_trials // 4)),
                                           n_warmup_steps=0)
    if space.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 3), reduction_factor=3)
    return optuna.pruners.NopPruner()


def suggest(trial, space: Space) -> dict:
    """The trial's point: a grid point's enqueued values, or the sampler's choice."""
    params = {}
    for p in space.params:
        if p.kind == "choice":
            params[p.name] = trial.suggest_categorical(p.name, p.choices)
        elif p.kind == "int":
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return params
