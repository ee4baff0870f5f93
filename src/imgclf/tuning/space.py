"""The space file: base config, searched parameters, budget, sampler and pruner.

A space file (YAML, e.g. src/imgclf/tuning/spaces/seed_cnn.yaml) is read and checked here, before
any training: every grid point (or both ends of every range) must make a valid config.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from ..config import make_config, parse_duration, read_config_file, read_yaml_file
from ..errors import ConfigError, quote
from .params import Param, as_number, parse_param

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
SPACE_KEYS = ("study", "base", "base_config", "params", "budget", "sampler", "pruner", "seed", "heartbeat",
              "max_attempts")
BUDGET_KEYS = ("trials", "epochs", "time", "trial_time")
SPACES_DIR = Path(__file__).parent / "spaces"


@dataclass
class Space:
    base: dict  # TrainConfig fields (checked), without the searched ones
    params: list[Param]
    sampler: str = "grid"
    pruner: str = "none"
    trials: int | None = None
    epochs: int | None = None
    time: float | None = None  # seconds for this tune run (no new trial starts after it)
    trial_time: float | None = None  # seconds per trial (TrainConfig.time_budget)
    seed: int = 0
    study: str | None = None
    heartbeat_interval: int = 10
    heartbeat_grace: int = 60
    max_attempts: int = 3
    source: str = "space"

    # -- derived ----------------------------------------------------------------------------
    def grid(self) -> list[dict]:
        """Every grid point, in a seeded random order (so a trial cap samples the grid evenly)."""
        names = [p.name for p in self.params]
        points = [dict(zip(names, values)) for values in itertools.product(*(p.choices for p in self.params))]
        random.Random(self.seed).shuffle(points)
        return points

    @property
    def trial_epochs(self) -> int:
        """Epochs per trial; where the space searches epochs, the most a trial can have."""
        searched = next((p for p in self.params if p.name == "epochs"), None)
        if searched is not None and not self.epochs:
            return int(max(searched.choices) if searched.kind == "choice" else searched.high)
        return int(self.epochs or self.base.get("epochs") or make_config().epochs)

    @property
    def budget_trials(self) -> int:
        if self.sampler == "grid":
            size = math.prod(len(p.choices) for p in self.params)
            return min(size, self.trials) if self.trials else size
        return self.trials or 20

    def trial_config(self, params: dict) -> dict:
        """Base config + one point of the space, as TrainConfig fields."""
        values = dict(self.base)
        options = dict(values.get("model_options") or {})
        for name, value in params.items():
            if name.startswith("model_options."):
                options[name.split(".", 1)[1]] = value
            else:
                values[name] = value
        values["model_options"] = options
        if self.epochs:
            values["epochs"] = self.epochs
        if self.trial_time:
            values["time_budget"] = self.trial_time
        values["keep_best"] = True  # each trial keeps at most its best checkpoint
        values["report"] = False
        return values

    def to_dict(self) -> dict:
        return {"base": self.base, "params": {p.name: (p.to_dict() if p.kind != "choice" else list(p.choices))
                                              for p in self.params},
                "sampler": self.sampler, "pruner": self.pruner, "seed": self.seed, "study": self.study,
                "budget": {"trials": self.trials, "epochs": self.epochs, "time": self.time,
                           "trial_time": self.trial_time},
                "heartbeat": {"interval": self.heartbeat_interval, "grace": self.heartbeat_grace},
                "max_attempts": self.max_attempts}

    def identity(self) -> dict:
        """What makes two runs the same study: everything that changes a trial's value."""
        base = {k: v for k, v in self.base.items() if k not in ("data", "test_data")}
        return {"base": base, "params": [{"name": p.name, **p.to_dict()} for p in self.params],
                "sampler": self.sampler,
                "epochs": self.epochs, "trial_time": self.trial_time, "seed": self.seed}

    def fingerprint(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _int_setting(value, where: str, minimum: int = 1) -> int:
    value = as_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {quote(value)}")
    return value


def space_from_dict(raw: dict, source: str = "space", *, base_dir: Path | None = None, sampler: str | None = None,
                    pruner: str | None = None, trials=None, epochs=None, time_budget=None, trial_time=None,
                    base_overrides: dict | None = None, seed=None) -> Space:
    """Check a space mapping (as read from YAML) and return a Space. Flags win over the file."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with params:, base:, budget:, got {type(raw).__name__}")
    unknown = set(raw) - set(SPACE_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)} (expected {', '.join(SPACE_KEYS)})")
    # -- base config ------------------------------------------------------------------------
    base: dict = {}
    if raw.get("base_config"):
        path = Path(raw["base_config"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        base.update(read_config_file(path))
    base_raw = raw.get("base") or {}
    if not isinstance(base_raw, dict):
        raise ConfigError(f"{source}: base: expected a mapping of config fields, got {quote(base_raw)}")
    base.update(base_raw)
    base.update({k: v for k, v in (base_overrides or {}).items() if v is not None})
    try:
        checked = make_config(**base)  # every field name and type checked, recipe applied
    except ConfigError as e:
        raise ConfigError(f"{source}: base: {e}") from None
    base = {k: v for k, v in checked.to_dict().items() if k in base or k == "model_options"}
    # -- params ---------------------------------------------------------------------------------
    params_raw = raw.get("params")
    if not params_raw:
        raise ConfigError(f"{source}: params: nothing to search (expected at least one parameter with values)")
    if not isinstance(params_raw, dict):
        raise ConfigError(f"{source}: params: expected a mapping of parameter -> values, got {quote(params_raw)}")
    params = [parse_param(name, spec, f"{source}: params") for name, spec in params_raw.items()]
    for p in params:
        if p.name in base and p.name != "model_options":
            base.pop(p.name)  # the searched value wins over the base value
    # -- sampler, pruner, budget ---------------------------------------------------------------
    sampler = sampler or raw.get("sampler") or "grid"
    if sampler not in SAMPLERS:
        raise ConfigError(f"{source}: sampler: expected one of {', '.join(SAMPLERS)}, got {quote(sampler)}")
    pruner = pruner or raw.get("pruner") or ("none" if sampler == "grid" else "median")
    pruner = "none" if pruner is False else str(pruner)
    if pruner not in PRUNERS:
        raise ConfigError(f"{source}: pruner: expected one of {', '.join(PRUNERS)}, got {quote(pruner)}")
    if sampler == "grid":
        ranges = [p.name for p in params if p.kind != "choice"]
        if ranges:
            raise ConfigError(f"{source}: params.{ranges[0]}: the grid sampler needs a list of values, got a range "
                              f"(list the values, or use sampler: random or tpe)")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict):
        raise ConfigError(f"{source}: budget: expected a mapping ({', '.join(BUDGET_KEYS)}), got {quote(budget)}")
    unknown = set(budget) - set(BUDGET_KEYS)
    if unknown:
        raise ConfigError(f"{source}: budget: unknown key(s) {sorted(unknown)} (expected {', '.join(BUDGET_KEYS)})")
    trials = trials if trials is not None else budget.get("trials")
    trials = None if trials is None else _int_setting(trials, f"{source}: budget.trials")
    epochs = epochs if epochs is not None else budget.get("epochs")
    epochs = None if epochs is None else _int_setting(epochs, f"{source}: budget.epochs")
    if epochs is not None and any(p.name == "epochs" for p in params):
        raise ConfigError(f"{source}: budget.epochs (or --epochs) fixes the epochs that params.epochs searches; "
                          f"expected one of the two, got budget.epochs {epochs}")
    time_s = parse_duration(time_budget if time_budget is not None else budget.get("time"), f"{source}: budget.time")
    trial_time = parse_duration(trial_time if trial_time is not None else budget.get("trial_time"),
                               f"{source}: budget.trial_time")
    heartbeat = raw.get("heartbeat") or {}
    if not isinstance(heartbeat, dict) or set(heartbeat) - {"interval", "grace"}:
        raise ConfigError(f"{source}: heartbeat: expected {{interval: SECONDS, grace: SECONDS}}, got {quote(heartbeat)}")
    interval = _int_setting(heartbeat.get("interval", 10), f"{source}: heartbeat.interval")
    grace = _int_setting(heartbeat.get("grace", max(60, 3 * interval)), f"{source}: heartbeat.grace")
    if grace <= interval:
        raise ConfigError(f"{source}: heartbeat.grace: expected more than interval ({interval}), got {grace}")
    study = raw.get("study")
    if study is not None and (not isinstance(study, str) or not study.strip()):
        raise ConfigError(f"{source}: study: expected a name, got {quote(study)}")
    space = Space(base=base, params=params, sampler=sampler, pruner=pruner, trials=trials, epochs=epochs,
                  time=time_s, trial_time=trial_time,
                  seed=_int_setting(seed if seed is not None else raw.get("seed", 0), f"{source}: seed", 0),
                  study=study, heartbeat_interval=interval, heartbeat_grace=grace,
                  max_attempts=_int_setting(raw.get("max_attempts", 3), f"{source}: max_attempts"), source=source)
    # Every grid point (or both ends of every range) must make a valid config: caught here,
    # before any training, not in trial 17.
    points = space.grid() if sampler == "grid" else [
        {p.name: (p.choices[0] if p.kind == "choice" else p.low) for p in params},
        {p.name: (p.choices[-1] if p.kind == "choice" else p.high) for p in params}]
    if sampler != "grid":
        for p in params:
            if p.kind == "choice":
                points += [{**points[0], p.name: c} for c in p.choices]
    for point in points:
        try:
            make_config(**space.trial_config(point))
        except ConfigError as e:
            raise ConfigError(f"{source}: params {json.dumps(point, default=str)}: {e}") from None
    return space


def read_space(path: str | Path, **overrides) -> Space:
    """Read and check a space file (YAML)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: space file not found")
    raw = read_yaml_file(path, "a search-space file")
    return space_from_dict(raw, str(path), base_dir=path.parent, **overrides)


def example_space(name: str = "seed_cnn") -> Path:
    """Path of a space file shipped with the package (imgclf/tuning/spaces/<name>.yaml)."""
    path = SPACES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"space {quote(name)}: no such example space (have: "
                          f"{', '.join(p.stem for p in SPACES_DIR.glob('*.yaml'))})")
    return path


def format_params(params: dict) -> str:
    """One point of a space, for logs and summaries: learning_rate=0.01, momentum=0.9."""
    return ", ".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in params.items())
