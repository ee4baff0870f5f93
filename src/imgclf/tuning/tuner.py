"""Hyperparameter search: `imgclf tune SPACE.yaml --data ...`, on Optuna.

A space file declares the base config, the searched parameters, the budget, the sampler and
the pruner (see src/imgclf/tuning/spaces/seed_cnn.yaml). The study lives in a storage: by default an
SQLite file in the study directory; `--storage postgresql://...` with the same `--study NAME`
lets workers on any number of machines join one study.

Design (the traps named in the issue, designed around):

* Grid points are evaluated exactly once however many workers run. Optuna's GridSampler is not
  used (it repeats points under concurrency). The grid is enqueued as WAITING trials, and every
  enqueue and every claim happens under a study lock: an advisory lock on PostgreSQL, a file
  lock next to an SQLite file. Enqueueing is idempotent: a point is enqueued only when no trial
  for it is waiting, running, complete or pruned, so workers joining late, a resumed run, or two
  machines starting at once cannot add it twice. (SQLite's check-then-set in Optuna's own queue
  pop is not atomic; under the lock it does not need to be.)
* A killed worker's trial is failed and its grid point re-queued: by Optuna's heartbeat (RDB
  storage) after the grace period, or at once when the worker ran on this machine and its
  process is gone. Points that failed `max_attempts` times are not re-queued again.
* First use of an empty database: Optuna creates its tables when the storage is opened, which
  races when workers start together. The storage is opened under a lock on the whole database
  (the same kinds of lock, with a database-wide key), so they all join the study.
* SQLite: WAL journal, a 120 s busy timeout, and retries around our own writes.
* Model selection uses the validation split only: trials train with `evaluate_test=False`; the
  test set, when the dataset has one, is evaluated once, for the best trial's model, at the end.
* Trials do not leak: the Keras session is cleared between trials, each trial keeps only its
  best-epoch model (train's keep_best), and per-trial memory (RSS, peak RSS) is recorded.

Study directory (default studies/<study>):
    study.db                 the SQLite storage (unless --storage is given)
    tune.json                what `imgclf tune --resume STUDY_DIR` needs (no passwords)
    trials/trial-0007/       one run directory per trial (config.yaml, history.csv, model.keras...)
    logs/worker-<i>.log      output of local worker processes (--workers N > 1)
    progress.json            live counts and best so far (rewritten while the study runs)
    trials.csv, trials.md    results table: trial, state, parameters, val accuracy/loss, epochs, seconds
    best_config.yaml         the best trial's config: `imgclf train --config best_config.yaml` reproduces it
    summary.json             counts, best trial, time saved by pruning, test result (if any)
    plots/optimization_history.png, plots/param_importances.png, plots/slice.png,
    plots/intermediate_values.png
    test/                    evaluation of the best model on the test set (only when there is one)
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import importlib
import io
import itertools
import json
import math
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import FIELD_TYPES, check_value, load_yaml, make_config, read_config_file, read_yaml_file
from ..errors import ConfigError, ImgclfError, quote
from ..fileio import atomic_write, write_json

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
SPACE_KEYS = ("study", "base", "base_config", "params", "budget", "sampler", "pruner", "seed", "heartbeat",
              "max_attempts")
BUDGET_KEYS = ("trials", "epochs", "time", "trial_time")
# Fields that would change the validation split (or are not hyperparameters): never searched.
NOT_SEARCHABLE = {
    "data": "is the dataset, not a hyperparameter (use --data)",
    "test_data": "is the dataset, not a hyperparameter",
    "val_fraction": "changes the validation split: every trial must be judged on the same images",
    "split_seed": "changes the validation split: every trial must be judged on the same images",
    "limit_per_class": "changes the validation split: every trial must be judged on the same images",
    "report": "is not a hyperparameter", "tensorboard": "is not a hyperparameter",
    "recipe": "is not a hyperparameter (put it in base:)",
    "model_options": "is a mapping: search its keys as model_options.KEY",
}
DEFAULT_STUDY_ROOT = Path("studies")
TOY_OBJECTIVE = "imgclf.tuning.tuner:toy_objective"
TRAIN_OBJECTIVE = "imgclf.tuning.tuner:train_objective"


class StorageError(ImgclfError):
    """A storage URL that cannot be used."""


# ---------------------------------------------------------------------------------------
# The space file
# ---------------------------------------------------------------------------------------

@dataclass
class Param:
    name: str
    kind: str  # choice | float | int
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def to_dict(self) -> dict:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        d = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            d["step"] = self.step
        return d

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {self.choices}"
        return f"{self.name} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")


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


def parse_seconds(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like 90, 90s, 30m or 1.5h, got {quote(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:])
        try:
            seconds = float(text[:-1]) * scale if scale else float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a duration like 90, 90s, 30m or 1.5h, got {quote(value)}") from None
    if not seconds > 0:
        raise ConfigError(f"{where}: expected a positive duration, got {quote(value)}")
    return seconds


def _number(value):
    """YAML 1.1 reads `1e-3` as a string; accept it as the number it means."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _field_kind(name: str) -> str | None:
    """'int', 'float', 'bool', 'str' for TrainConfig fields; None for model options (free)."""
    if name.startswith("model_options."):
        return None
    return FIELD_TYPES[name].split("|")[0].strip()


def _check_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: parameter names must be strings, got {quote(name)}")
    if name.startswith("model_options."):
        if not name.split(".", 1)[1]:
            raise ConfigError(f"{where}.{name}: expected model_options.KEY")
        return
    if name in NOT_SEARCHABLE:
        raise ConfigError(f"{where}.{name}: cannot be searched: it {NOT_SEARCHABLE[name]}")
    if name not in FIELD_TYPES:
        close = difflib.get_close_matches(name, list(FIELD_TYPES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else " (expected a config field or model_options.KEY)"
        raise ConfigError(f"{where}.{name}: unknown parameter{hint}")


def _check_choice(name: str, value, where: str):
    kind = _field_kind(name)
    value = _number(value) if kind in (None, "int", "float") else value
    if kind is None:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"{where}.{name}: values must be numbers, strings or booleans, got {quote(value)}")
        return value
    try:
        return check_value(name, value, where)
    except ConfigError:
        raise ConfigError(f"{where}.{name}: value {quote(value)} is not a valid {FIELD_TYPES[name]}") from None


def _parse_param(name: str, spec, where: str) -> Param:
    _check_name(name, where)
    if isinstance(spec, dict) and ("values" in spec or "choices" in spec):
        unknown = set(spec) - {"values", "choices"}
        if unknown:
            raise ConfigError(f"{where}.{name}: unknown key(s) {sorted(unknown)} (expected choices)")
        spec = spec.get("choices", spec.get("values"))
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}.{name}: empty list of values (the grid would be empty)")
        choices = [_check_choice(name, v, where) for v in spec]
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}.{name}: repeated values in {quote(spec)}")
        return Param(name, "choice", choices=choices)
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log", "step", "type"}
        if unknown or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}.{name}: expected a list of values, {{choices: [...]}} or "
                              f"{{low: X, high: Y, log: true|false, step: S}}, got {quote(spec)}")
        kind = _field_kind(name)
        if kind in ("bool", "str", "dict"):
            raise ConfigError(f"{where}.{name}: a {kind} field cannot be a range; give a list of values")
        low, high, step = _number(spec["low"]), _number(spec["high"]), _number(spec.get("step"))
        for key, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{where}.{name}.{key}: expected a number, got {quote(v)}")
        declared = spec.get("type")
        if declared not in (None, "int", "float"):
            raise ConfigError(f"{where}.{name}.type: expected int or float, got {quote(declared)}")
        kind = kind or declared or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
        if kind == "int" and not all(float(v).is_integer() for v in (low, high) + ((step,) if step else ())):
            raise ConfigError(f"{where}.{name}: {name} is an int field; low/high/step must be integers")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.{name}.log: expected true or false, got {quote(log)}")
        if not low < high:
            raise ConfigError(f"{where}.{name}: expected low < high, got low={low}, high={high}")
        if log and low <= 0:
            raise ConfigError(f"{where}.{name}: a log range needs low > 0, got {low}")
        if log and step is not None:
            raise ConfigError(f"{where}.{name}: a log range cannot have a step")
        if step is not None and step <= 0:
            raise ConfigError(f"{where}.{name}.step: expected a positive number, got {step}")
        cast = int if kind == "int" else float
        for v in (low, high):
            _check_choice(name, cast(v), where)
        return Param(name, kind, low=cast(low), high=cast(high), log=log,
                     step=None if step is None else cast(step))
    raise ConfigError(f"{where}.{name}: expected a list of values (grid) or a range {{low, high, log}}, "
                      f"got {quote(spec)}")


def _int_setting(value, where: str, minimum: int = 1) -> int:
    value = _number(value)
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
    params = [_parse_param(name, spec, f"{source}: params") for name, spec in params_raw.items()]
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
    time_s = parse_seconds(time_budget if time_budget is not None else budget.get("time"), f"{source}: budget.time")
    trial_time = parse_seconds(trial_time if trial_time is not None else budget.get("trial_time"),
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
    path = Path(__file__).parent / "spaces" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"space {quote(name)}: no such example space (have: "
                          f"{', '.join(p.stem for p in (Path(__file__).parent / 'spaces').glob('*.yaml'))})")
    return path


# ---------------------------------------------------------------------------------------
# Storage and the study lock
# ---------------------------------------------------------------------------------------

def redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is reported by open_storage
        return url.split("@")[-1] if "@" in url else url


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def _set_wal(db: Path) -> None:
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db, timeout=120)) as con:
        con.execute("PRAGMA journal_mode=WAL")


def open_storage(url: str, space: Space):
    """An Optuna RDBStorage with heartbeat; StorageError (one line) when it cannot be used.

    The first use of an empty database creates Optuna's tables. Workers that start at the same
    moment would race there (PostgreSQL: "duplicate key value violates unique constraint"), so
    the storage is opened under a lock on the whole database (see StudyLock)."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    shown = redact(url)
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise StorageError(f"--storage {shown}: not a database URL (expected sqlite:///FILE or "
                           f"postgresql://USER:PASSWORD@HOST:PORT/DB)") from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    db = sqlite_path(url)
    if backend == "sqlite":
        if db is None or not str(db):
            raise StorageError(f"--storage {shown}: expected sqlite:///PATH/TO/FILE.db")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)  # the lock file goes next to the database
        except OSError as e:
            raise StorageError(f"--storage {shown}: cannot open the database file ({_first_line(e)})") from None
        engine_kwargs["connect_args"] = {"timeout": 120}
    elif backend == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with StudyLock(url, None):
            if db is not None:
                try:
                    _set_wal(db)
                except Exception as e:  # noqa: BLE001
                    raise StorageError(f"--storage {shown}: cannot open the database file "
                                       f"({_first_line(e)})") from None
            storage = _rdb_storage(url, engine_kwargs, space)
    except StorageError:
        raise
    except ImportError:  # SQLAlchemy 2.1's postgresql:// driver is psycopg 3
        hint = " (pip install 'psycopg[binary]')" if backend == "postgresql" else ""
        raise StorageError(f"--storage {shown}: the database driver for {parsed.drivername} is not "
                           f"installed{hint}") from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy/driver errors: one line, no traceback
        problem = "cannot open the database file" if db is not None and isinstance(e, OSError) else "cannot connect"
        raise StorageError(f"--storage {shown}: {problem} ({_first_line(e)})") from None
    return storage


def _rdb_storage(url: str, engine_kwargs: dict, space: Space, attempts: int = 5):
    """optuna.storages.RDBStorage, which creates Optuna's tables when they are missing. It runs
    under the database lock; retrying a duplicate-table/duplicate-row error covers a database
    that another program (without the lock) is setting up at the same moment."""
    import optuna
    from sqlalchemy import exc as sa_exc

    for i in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=space.heartbeat_interval,
                                                  grace_period=space.heartbeat_grace)
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
            if i == attempts - 1:
                raise
            time.sleep(0.2 * 2 ** i * (0.5 + random.random()))


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


class StudyLock:
    """Serialises enqueue and claim across all workers of one study; with study_name=None, the
    opening of the storage (Optuna creating its tables in an empty database) across all workers.

    PostgreSQL: pg_advisory_lock on a dedicated connection (released if the worker dies).
    SQLite: fcntl.flock on <db>.lock (released by the OS if the worker dies).
    Other backends: no lock (Optuna's own row locking only).
    """

    def __init__(self, url: str, study_name: str | None):
        self.url, self.study_name = url, study_name
        self.kind = "none"
        self._engine = None
        self._conn = None
        self._file = None
        scope = "imgclf-tune open storage" if study_name is None else f"imgclf-tune:{study_name}"
        self._key = int.from_bytes(hashlib.sha256(scope.encode()).digest()[:8], "big", signed=True)
        db = sqlite_path(url)
        if db is not None:
            self.kind, self._path = "file", db.with_name(db.name + ".lock")
        elif url.startswith(("postgresql", "postgres")):
            self.kind = "postgres"

    def __enter__(self):
        if self.kind == "file":
            import fcntl

            self._file = open(self._path, "a+")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        elif self.kind == "postgres":
            import sqlalchemy as sa

            if self._engine is None:
                self._engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool,
                                                connect_args={"connect_timeout": 10})
            self._conn = self._engine.connect()
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            except BaseException:
                self._conn.close()
                self._conn = None
                raise
        return self

    def __exit__(self, *exc):
        if self.kind == "file" and self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        elif self.kind == "postgres" and self._conn is not None:
            import sqlalchemy as sa

            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        return False


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """Retry a storage call that hit SQLite's 'database is locked' (or a dropped connection)."""
    from sqlalchemy import exc as sa_exc

    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except sa_exc.OperationalError:
            if i == attempts - 1:
                raise
            time.sleep(min(30.0, 0.5 * 2 ** i) * (0.5 + random.random()))


# ---------------------------------------------------------------------------------------
# Creating / joining a study, enqueueing the grid, claiming trials
# ---------------------------------------------------------------------------------------

def _machine_id() -> str:
    """Which machine (and pid namespace) a worker runs on: trials of dead local workers are failed
    at once; others wait for the heartbeat. IMGCLF_TUNE_MACHINE overrides it (tests, odd containers)."""
    if os.environ.get("IMGCLF_TUNE_MACHINE"):
        return os.environ["IMGCLF_TUNE_MACHINE"]
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}/{boot[:8]}/{ns}"


def _grid_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True, default=str)


def _trial_point(trial, names: list[str]) -> dict | None:
    params = trial.system_attrs.get("fixed_params") or trial.params
    if not all(n in params for n in names):
        return None
    return {n: params[n] for n in names}


def open_study(storage, name: str, space: Space, *, create: bool = True, data: str | None = None):
    """Create or join study `name`; refuse one that exists with a different space."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        if not create:
            raise ConfigError(f"--study {name}: no such study in the storage (found: "
                              f"{', '.join(names) or 'none'}); run without --resume to start it")
        try:
            optuna.create_study(study_name=name, storage=storage, direction="maximize")
        except DuplicatedStudyError:
            pass  # another worker created it a moment ago
    study = optuna.load_study(study_name=name, storage=storage)
    attrs = study.user_attrs
    if "imgclf_space" not in attrs:
        if study.trials:
            raise ConfigError(f"--study {name}: the study exists and was not created by imgclf tune; "
                              f"choose another --study name")
        study.set_user_attr("imgclf_space", space.identity())
        study.set_user_attr("imgclf_fingerprint", space.fingerprint())
        study.set_user_attr("imgclf_data", data)
    elif attrs.get("imgclf_fingerprint") != space.fingerprint():
        old, new = attrs["imgclf_space"], space.identity()
        diff = sorted(k for k in set(old) | set(new) if json.dumps(old.get(k), sort_keys=True, default=str)
                      != json.dumps(new.get(k), sort_keys=True, default=str))
        detail = ", ".join(diff)
        if "base" in diff:
            b_old, b_new = old.get("base", {}), new.get("base", {})
            fields_ = sorted(k for k in set(b_old) | set(b_new) if b_old.get(k) != b_new.get(k))
            detail = detail.replace("base", f"base ({', '.join(fields_)})")
        raise ConfigError(f"--study {name}: the study exists with a different search space (differs in: {detail});"
                          f" use another --study name, or the space it was started with")
    return study


def _counts_by_point(trials, names):
    from optuna.trial import TrialState

    covered, failed = set(), {}
    for t in trials:
        point = _trial_point(t, names)
        if point is None:
            continue
        key = _grid_key(point)
        if t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
            covered.add(key)
        elif t.state == TrialState.FAIL and t.user_attrs.get("objective_error"):
            failed[key] = failed.get(key, 0) + 1  # only the objective's own errors use up attempts
    return covered, failed


def enqueue_grid(study, space: Space) -> int:
    """Enqueue the grid points that no trial covers (call under the study lock). Returns how many."""
    names = [p.name for p in space.params]
    trials = _retry(study.get_trials, deepcopy=False)
    covered, failed = _counts_by_point(trials, names)
    room = space.budget_trials - len(covered)
    added = 0
    for point in space.grid():
        if added >= room:
            break
        key = _grid_key(point)
        if key in covered or failed.get(key, 0) >= space.max_attempts:
            continue
        _retry(study.enqueue_trial, point, user_attrs={"grid_key": key, "attempt": failed.get(key, 0) + 1})
        covered.add(key)
        added += 1
    return added


def fail_dead_trials(study, space: Space) -> list[int]:
    """Fail RUNNING trials whose worker is gone: at once for workers on this machine (process
    gone), by Optuna's heartbeat (no heartbeat for `grace` seconds) for any other. Returns numbers."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    before = {t.number for t in _retry(study.get_trials, deepcopy=False, states=(TrialState.FAIL,))}
    me = _machine_id()
    for t in _retry(study.get_trials, deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("machine") != me or not worker.get("pid") or _pid_alive(worker["pid"]):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "failed_reason",
                                               f"worker process {worker['pid']} on {worker.get('host')} is gone")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except Exception:  # noqa: BLE001 - finished meanwhile
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _retry(fail_stale_trials, study)
    failed = [t for t in _retry(study.get_trials, deepcopy=False, states=(TrialState.FAIL,))
              if t.number not in before]
    for t in failed:  # a dead trial keeps nothing but its logs: drop its per-epoch backups
        run_dir = t.user_attrs.get("run_dir")
        if run_dir and (t.user_attrs.get("worker") or {}).get("machine") == me:
            import shutil

            shutil.rmtree(Path(run_dir) / "backup", ignore_errors=True)
    return [t.number for t in failed]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child, killed, not reaped yet) is not alive
        state = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def claim(study, space: Space, lock: StudyLock) -> tuple[int | None, bool]:
    """Take the next trial: a waiting one (grid point or re-queued), or for samplers a new one
    while the budget allows. Returns (trial_id or None, whether others are still running)."""
    from optuna.trial import TrialState

    with lock:
        fail_dead_trials(study, space)
        if space.sampler == "grid":
            enqueue_grid(study, space)
        trials = _retry(study.get_trials, deepcopy=False)
        running = any(t.state == TrialState.RUNNING for t in trials)
        for t in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
            try:
                if _retry(study._storage.set_trial_state_values, t._trial_id, TrialState.RUNNING):
                    # a first heartbeat before the lock is released: a worker that dies before
                    # its heartbeat thread starts still leaves a trial the heartbeat check can fail
                    _retry(study._storage.record_heartbeat, t._trial_id)
                    return t._trial_id, running
            except Exception:  # noqa: BLE001 - UpdateFinishedTrialError: someone else took it
                continue
        if space.sampler != "grid":
            alive = sum(t.state != TrialState.FAIL for t in trials)
            if alive < space.budget_trials:
                trial_id = _retry(study._storage.create_new_trial, study._study_id)
                _retry(study._storage.record_heartbeat, trial_id)
                return trial_id, running
        return None, running


# ---------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------

@dataclass
class TrialContext:
    """What an objective gets. `report(step, value)` returns True when the pruner says stop."""

    trial: Any  # optuna.Trial
    params: dict
    config: dict  # TrainConfig fields for this trial
    run_dir: Path
    space: Space
    extra: dict = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.trial.number

    def report(self, step: int, value: float) -> bool:
        parent = self.extra.get("parent")
        if parent and os.getppid() != parent:  # a trial process whose worker was killed: stop
            raise SystemExit(f"worker process {parent} is gone")
        _retry(self.trial.report, float(value), int(step))
        if self.space.pruner == "none" or (not self.space.trial_time and step >= self.space.trial_epochs):
            return False  # stopping at the last epoch saves nothing: the trial completes
        return bool(_retry(self.trial.should_prune))

    def set(self, key: str, value) -> None:
        _retry(self.trial.set_user_attr, key, value)


_TF_THREADS_SET = False


def _limit_threads() -> None:
    global _TF_THREADS_SET
    n = os.environ.get("IMGCLF_TUNE_THREADS")
    if _TF_THREADS_SET or not n:
        return
    _TF_THREADS_SET = True
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):  # already initialised: too late, keep defaults
            tf.config.threading.set_intra_op_parallelism_threads(int(n))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(n)))


def train_objective(ctx: TrialContext) -> dict:
    """The default objective: imgclf.training.train with the trial's config; best-epoch
    validation accuracy; per-epoch validation accuracy goes to the pruner."""
    import gc

    _limit_threads()
    import keras
    import optuna

    from ..training.trainer import train

    class Report(keras.callbacks.Callback):
        pruned_at = None

        def on_epoch_end(self, epoch, logs=None):
            acc = (logs or {}).get("val_accuracy")
            if acc is not None and ctx.report(epoch + 1, acc):
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    keras.backend.clear_session()
    report = Report()
    try:
        result = train(make_config(**ctx.config), run_dir=ctx.run_dir, verbose=0, callbacks=[report],
                       evaluate_test=False)
    finally:
        keras.backend.clear_session()
        gc.collect()
    out = {"val_accuracy": result.metrics["val"]["accuracy"], "val_loss": result.metrics["val"]["loss"],
           "epochs_run": result.metrics["epochs_run"], "train_accuracy": result.metrics["train"]["accuracy"],
           "model": str(result.model_path)}
    if report.pruned_at is not None:
        for k, v in out.items():
            ctx.set(k, v)
        raise optuna.TrialPruned(f"pruned after epoch {report.pruned_at}")
    return out


def toy_objective(ctx: TrialContext) -> dict:
    """A synthetic objective for checking a storage/worker setup without training.

    Value: a smooth function of the numeric parameters plus a hash of the others, in [0, 1].
    Sleeps IMGCLF_TOY_SECONDS (default 0.2) per step over `epochs` steps (reported to the pruner),
    and appends one JSON line per evaluation start to IMGCLF_TOY_LOG if that is set."""
    import optuna

    log = os.environ.get("IMGCLF_TOY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"trial": ctx.number, "params": ctx.params, "pid": os.getpid()}, sort_keys=True) + "\n")
    seconds = float(os.environ.get("IMGCLF_TOY_SECONDS", "0.2"))
    score = 0.0
    for name, value in sorted(ctx.params.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            score += 1.0 / (1.0 + abs(math.log10(abs(value) + 1e-12) + 1.5))
        else:
            score += int(hashlib.sha256(str(value).encode()).hexdigest()[:4], 16) / 65535
    target = score / max(1, len(ctx.params))
    epochs = int(ctx.config.get("epochs") or 1)
    value = 0.0
    for step in range(1, epochs + 1):
        time.sleep(seconds)
        value = target * (1 - 0.5 ** step)
        if ctx.report(step, value):
            ctx.set("epochs_run", step)
            raise optuna.TrialPruned(f"pruned after step {step}")
    return {"val_accuracy": value, "val_loss": 1.0 - value, "epochs_run": epochs}


def resolve_objective(objective) -> tuple[Callable, str | None]:
    """A callable or 'module:function' (or 'train' / 'toy') -> (callable, import string or None)."""
    if objective is None or objective == "train":
        objective = TRAIN_OBJECTIVE
    elif objective == "toy":
        objective = TOY_OBJECTIVE
    if callable(objective):
        module, name = getattr(objective, "__module__", None), getattr(objective, "__qualname__", "")
        ref = f"{module}:{name}" if module and module != "__main__" and "<" not in name else None
        return objective, ref
    if not isinstance(objective, str) or ":" not in objective:
        raise ConfigError(f"--objective: expected MODULE:FUNCTION, 'train' or 'toy', got {quote(objective)}")
    module, name = objective.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--objective {objective}: cannot import ({_first_line(e)})") from None
    if not callable(fn):
        raise ConfigError(f"--objective {objective}: not a function")
    return fn, objective


# ---------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------

def _suggest(trial, space: Space) -> dict:
    params = {}
    for p in space.params:
        if p.kind == "choice":
            params[p.name] = trial.suggest_categorical(p.name, p.choices)
        elif p.kind == "int":
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return params


def _make_sampler(space: Space, number: int):
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


class _Heartbeat:
    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False


def _memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    rss = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Terminate(BaseException):
    pass


def _on_sigterm(signum, frame):
    raise _Terminate()


def run_trial(study, trial_id: int, space: Space, spec: dict, objective: Callable, log=print) -> str:
    """Run one claimed trial to a final state; returns the state name."""
    import optuna
    from optuna.trial import TrialState

    number = _retry(study._storage.get_trial_number_from_id, trial_id)
    study.sampler = _make_sampler(space, number)
    study.pruner = make_pruner(space)
    trial = optuna.Trial(study, trial_id)
    run_dir = Path(spec["study_dir"]) / "trials" / f"trial-{number:04d}"
    worker = {"host": socket.gethostname(), "pid": os.getpid(), "machine": _machine_id(),
              "id": spec.get("worker_id", "0")}
    _retry(trial.set_user_attr, "worker", worker)
    _retry(trial.set_user_attr, "run_dir", str(run_dir.resolve()))
    t0 = time.perf_counter()
    state, value, error = TrialState.FAIL, None, None
    ctx = None
    with _Heartbeat(study._storage, trial_id, space.heartbeat_interval):
        try:
            params = _suggest(trial, space)
            ctx = TrialContext(trial, params, space.trial_config(params), run_dir, space,
                               extra={"data": spec.get("data")})
            if spec.get("data"):
                ctx.config["data"] = spec["data"]
            if spec.get("test_data"):
                ctx.config["test_data"] = spec["test_data"]
            log(f"trial {number} started: {_fmt_params(params)}")
            if spec.get("isolate") == "process" and spec.get("objective"):
                out = _objective_in_child(ctx, spec, trial_id, log)
            else:
                out = objective(ctx)
            if isinstance(out, dict):
                value = out.get("val_accuracy", out.get("value"))
                for k, v in out.items():
                    if k != "value" and (v is None or isinstance(v, (int, float, str, bool))):
                        _retry(trial.set_user_attr, k, v)
            else:
                value = out
            if value is None or not math.isfinite(float(value)):
                raise ImgclfError(f"objective returned {quote(value)} (expected a finite number)")
            value = float(value)
            state = TrialState.COMPLETE
        except optuna.TrialPruned as e:
            state = TrialState.PRUNED
            error = str(e) or "pruned"
        except (KeyboardInterrupt, _Terminate):
            error = "interrupted"
            _finish(study, trial, TrialState.FAIL, None, error, t0, run_dir)
            raise
        except Exception as e:  # noqa: BLE001 - a failed trial is recorded, the study goes on
            error = f"{type(e).__name__}: {_first_line(e)}"
            with contextlib.suppress(Exception):
                _retry(trial.set_user_attr, "objective_error", True)
            log(f"trial {number} failed: {error}\n" + traceback.format_exc())
    _finish(study, trial, state, value, error, t0, run_dir,
            child_peak=ctx.extra.get("child_peak_rss_mb") if ctx is not None else None)
    return state.name


class TrialProcessError(Exception):
    """The objective failed (or its process died) in the trial's child process."""


def _objective_in_child(ctx: TrialContext, spec: dict, trial_id: int, log) -> dict | float:
    """Run the objective in a fresh Python process: whatever TensorFlow/Keras keep alive
    between models dies with it, so a worker's memory stays flat over hundreds of trials.
    The child talks to the storage itself (reports, pruning); the heartbeat stays here."""
    import optuna

    result_file = ctx.run_dir.parent / f".result-{ctx.number:04d}-{os.getpid()}.json"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    payload = {"storage": spec["storage"], "study": spec["study"], "trial_id": trial_id, "space": ctx.space.to_dict(),
               "params": ctx.params, "config": ctx.config, "run_dir": str(ctx.run_dir), "objective": spec["objective"],
               "sys_path": spec.get("sys_path", []), "result": str(result_file), "parent": os.getpid()}
    log_path = Path(spec["study_dir"]) / "logs" / f"trial-{ctx.number:04d}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "imgclf.tuning.tuner", "--trial"], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            proc.communicate(json.dumps(payload).encode())
        except BaseException:  # interrupted: the child goes too
            proc.kill()
            proc.wait()
            raise
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
        raise TrialProcessError(f"trial process exited with code {proc.returncode}"
                                + (f" ({tail[0][:200]})" if tail else "")) from None
    finally:
        result_file.unlink(missing_ok=True)
    ctx.extra["child_peak_rss_mb"] = result.get("peak_rss_mb")
    if result["status"] == "pruned":
        raise optuna.TrialPruned(result.get("reason") or "pruned")
    if result["status"] != "ok":
        log(result.get("traceback", ""))
        raise TrialProcessError(result.get("error", "failed"))
    return result["out"]


def _trial_main() -> int:
    """Child process of one trial: python -m imgclf.tuning.tuner --trial (payload on stdin)."""
    import optuna

    payload = json.loads(sys.stdin.read())
    for p in payload.get("sys_path", []):
        if p not in sys.path:
            sys.path.insert(0, p)
    _quiet_optuna()
    space = space_from_dict(payload["space"], "trial")
    storage = open_storage(payload["storage"], space)
    study = optuna.load_study(study_name=payload["study"], storage=storage)
    number = storage.get_trial_number_from_id(payload["trial_id"])
    study.sampler, study.pruner = _make_sampler(space, number), make_pruner(space)
    trial = optuna.Trial(study, payload["trial_id"])
    ctx = TrialContext(trial, payload["params"], payload["config"], Path(payload["run_dir"]), space,
                       extra={"parent": payload["parent"]})
    fn, _ = resolve_objective(payload["objective"])
    try:
        out = fn(ctx)
        if isinstance(out, dict):
            out = {k: v for k, v in out.items() if v is None or isinstance(v, (int, float, str, bool))}
        result = {"status": "ok", "out": out}
    except optuna.TrialPruned as e:
        result = {"status": "pruned", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - reported to the worker, which fails the trial
        result = {"status": "error", "error": f"{type(e).__name__}: {_first_line(e)}",
                  "traceback": traceback.format_exc()}
    result["peak_rss_mb"] = round(_memory_mb()[1], 1)
    write_json(Path(payload["result"]), result)
    return 0


def _finish(study, trial, state, value, error, t0, run_dir: Path, child_peak: float | None = None) -> None:
    from optuna.trial import TrialState

    seconds = time.perf_counter() - t0
    rss, peak = _memory_mb()
    with contextlib.suppress(Exception):
        _retry(trial.set_user_attr, "seconds", round(seconds, 3))
        _retry(trial.set_user_attr, "rss_mb", round(rss, 1))  # the worker process, after the trial
        _retry(trial.set_user_attr, "worker_peak_rss_mb", round(peak, 1))
        if child_peak:
            _retry(trial.set_user_attr, "trial_process_peak_rss_mb", child_peak)
        _retry(trial.set_user_attr, "peak_rss_mb", round(max(peak, child_peak or 0), 1))
        if error and state != TrialState.COMPLETE:
            _retry(trial.set_user_attr, "failed_reason" if state == TrialState.FAIL else "pruned_reason", error)
    if state == TrialState.FAIL:
        import shutil

        shutil.rmtree(run_dir / "backup", ignore_errors=True)
    _retry(study.tell, trial, value if state == TrialState.COMPLETE else None, state=state,
           skip_if_finished=True)


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_worker(spec: dict, objective: Callable | None = None, log=None, on_change=None) -> dict:
    """The worker loop: claim a trial, run it, until the budget, the grid or the time is used up.

    Returns {"trials": n run here, "states": {...}, "errors": [...]}.
    """
    _quiet_optuna()
    space = space_from_dict(spec["space"], spec.get("space_source", "space"))
    if objective is None:
        objective, _ = resolve_objective(spec.get("objective"))
    log = log or (lambda msg: print(msg, flush=True))
    storage = open_storage(spec["storage"], space)
    study = open_study(storage, spec["study"], space, create=False)
    lock = StudyLock(spec["storage"], spec["study"])
    deadline = spec.get("deadline")
    poll = float(spec.get("poll_seconds", min(2, space.heartbeat_interval)))
    done: dict[str, int] = {}
    errors: list[str] = []
    consecutive_failures = 0
    while True:
        if deadline and time.time() >= deadline:
            log("time budget reached: no new trials")
            break
        trial_id, others_running = claim(study, space, lock)
        if trial_id is None:
            if others_running:  # they may die: then their points come back to the queue
                time.sleep(poll)
                continue
            break
        if on_change:
            on_change()
        state = run_trial(study, trial_id, space, spec, objective, log=log)
        done[state] = done.get(state, 0) + 1
        if on_change:
            on_change()
        if state == "FAIL":
            consecutive_failures += 1
            t = study._storage.get_trial(trial_id)
            errors.append(t.user_attrs.get("failed_reason", "failed"))
            if consecutive_failures >= 3:
                log(f"stopping this worker: {consecutive_failures} trials failed in a row ({errors[-1]})")
                break
        else:
            consecutive_failures = 0
    return {"trials": sum(done.values()), "states": done, "errors": errors}


def _worker_main(argv=None) -> int:
    """Entry point of a local worker process: python -m imgclf.tuning.tuner --worker I (spec in env)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    spec = json.loads(os.environ["IMGCLF_TUNE_SPEC"])
    spec["worker_id"] = (argv or sys.argv[1:])[-1]
    for p in spec.get("sys_path", []):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        result = run_worker(spec)
    except (KeyboardInterrupt, _Terminate):
        return 130
    except ImgclfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------
# Progress and results
# ---------------------------------------------------------------------------------------

def best_trial(trials):
    """Highest validation accuracy; ties go to the lower validation loss, then the earlier trial."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    loss = lambda t: t.user_attrs.get("val_loss") if isinstance(t.user_attrs.get("val_loss"), (int, float)) \
        else float("inf")  # noqa: E731
    return max(complete, key=lambda t: (t.value, -loss(t), -t.number), default=None)


def study_counts(study) -> dict:
    from optuna.trial import TrialState

    trials = _retry(study.get_trials, deepcopy=False)
    c = {s: 0 for s in ("complete", "pruned", "running", "waiting", "failed")}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
             TrialState.WAITING: "waiting", TrialState.FAIL: "failed"}
    for t in trials:
        if t.state in names:
            c[names[t.state]] += 1
    best = best_trial(trials)
    c["done"] = c["complete"] + c["pruned"]
    c["best"] = None if best is None else {"trial": best.number, "val_accuracy": best.value,
                                           "params": best.params}
    return c


def progress_line(c: dict, total: int, elapsed: float) -> str:
    best = (f"best val_accuracy {c['best']['val_accuracy']:.4f} (trial {c['best']['trial']}: "
            f"{_fmt_params(c['best']['params'])})") if c["best"] else "best: none yet"
    m, s = divmod(int(elapsed), 60)
    return (f"[tune {m // 60:02d}:{m % 60:02d}:{s:02d}] {c['done']}/{total} done ({c['complete']} complete, "
            f"{c['pruned']} pruned) | {c['running']} running | {c['failed']} failed | {c['waiting']} waiting | {best}")


class Progress:
    def __init__(self, study, space: Space, study_dir: Path, enabled: bool = True):
        self.study, self.space, self.study_dir, self.enabled = study, space, study_dir, enabled
        self.t0 = time.perf_counter()
        self.last, self.last_time = None, 0.0
        self.lock = threading.Lock()

    def update(self, force: bool = False) -> dict:
        with self.lock:
            c = study_counts(self.study)
            key = json.dumps(c, sort_keys=True, default=str)
            elapsed = time.perf_counter() - self.t0
            if key != self.last or force or time.perf_counter() - self.last_time > 60:
                self.last, self.last_time = key, time.perf_counter()
                write_json(self.study_dir / "progress.json", {**c, "total": self.space.budget_trials,
                                                              "elapsed_seconds": elapsed, "time": time.time()})
                if self.enabled:
                    print(progress_line(c, self.space.budget_trials, elapsed), flush=True)
            return c


def trial_rows(study, space: Space) -> list[dict]:
    rows = []
    for t in _retry(study.get_trials, deepcopy=False):
        params = t.params or t.system_attrs.get("fixed_params") or {}
        a = t.user_attrs
        value = t.value if t.state.name == "COMPLETE" else a.get("val_accuracy", t.value)
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     **{p.name: params.get(p.name) for p in space.params},
                     "val_accuracy": value, "val_loss": a.get("val_loss"), "epochs_run": a.get("epochs_run"),
                     "seconds": a.get("seconds"), "peak_rss_mb": a.get("peak_rss_mb"),
                     "worker": (f"{a['worker']['host']}:{a['worker']['pid']}" if a.get("worker") else None),
                     "note": a.get("failed_reason") or a.get("pruned_reason")})
    return rows


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    formats = {"val_accuracy": "{:.4f}", "val_loss": "{:.4f}", "seconds": "{:.1f}", "peak_rss_mb": "{:.0f}"}

    def cell(c, v):
        if v is None:
            return ""
        if isinstance(v, float):
            return formats.get(c, "{:.4g}").format(v)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def pruning_savings(rows: list[dict], epochs: int | None) -> dict:
    """Estimated time pruning saved: the epochs a pruned trial did not run, at its own epoch time."""
    saved, epochs_saved, n = 0.0, 0, 0
    for r in rows:
        if r["state"] != "pruned" or not r.get("epochs_run") or not r.get("seconds") or not epochs:
            continue
        left = max(0, epochs - int(r["epochs_run"]))
        saved += left * float(r["seconds"]) / int(r["epochs_run"])
        epochs_saved += left
        n += 1
    spent = sum(float(r["seconds"] or 0) for r in rows if r["state"] in ("complete", "pruned"))
    return {"pruned_trials": n, "epochs_saved": epochs_saved, "seconds_saved_estimate": round(saved, 1),
            "trial_seconds_spent": round(spent, 1),
            "fraction_saved_estimate": round(saved / (saved + spent), 4) if saved + spent > 0 else 0.0}


def write_plots(study, plot_dir: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as PNG; a plot that cannot be drawn is listed with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    from ..figures import save_figure

    plot_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    plots = {"optimization_history": ovm.plot_optimization_history,
             "param_importances": ovm.plot_param_importances,
             "slice": ovm.plot_slice,
             "intermediate_values": ovm.plot_intermediate_values}
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4.5))
            save_figure(fig, plot_dir / f"{name}.png")
            out[name] = str(plot_dir / f"{name}.png")
        except Exception as e:  # noqa: BLE001 - e.g. importances need 2+ complete trials
            out[name] = f"not drawn: {_first_line(e)}"
        finally:
            plt.close("all")
    return out


def write_results(study, space: Space, study_dir: Path, data: str | None = None,
                  test_data: str | None = None, plots: bool = True) -> dict:
    """trials.csv, trials.md, best_config.yaml, plots/, summary.json in the study directory."""
    rows = trial_rows(study, space)
    columns = ["trial", "state", *[p.name for p in space.params], "val_accuracy", "val_loss", "epochs_run",
               "seconds", "peak_rss_mb", "worker", "note"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(study_dir / "trials.csv", buf.getvalue())
    _write_text(study_dir / "trials.md", markdown_table(rows, columns[:-2] + ["note"]))
    counts = study_counts(study)
    summary = {"study": study.study_name, "sampler": space.sampler, "pruner": space.pruner,
               "budget_trials": space.budget_trials, "epochs_per_trial": space.trial_epochs,
               "counts": {k: v for k, v in counts.items() if k != "best"}, "best": None,
               "pruning": pruning_savings(rows, space.trial_epochs),
               "files": {"trials_csv": "trials.csv", "trials_md": "trials.md"}}
    if counts["best"]:
        best = best_trial(_retry(study.get_trials, deepcopy=False))
        config = space.trial_config(best.params)
        config["data"] = data or config.get("data")
        if test_data:
            config["test_data"] = test_data
        config["report"] = True
        resolved = make_config(**config).to_dict()
        header = (f"# best configuration of study {study.study_name!r}: trial {best.number}, "
                  f"val_accuracy {best.value:.4f}\n# reproduce: imgclf train --config best_config.yaml\n")
        _write_text(study_dir / "best_config.yaml", header + yaml.safe_dump(resolved, sort_keys=False))
        summary["best"] = {"trial": best.number, "val_accuracy": best.value, "params": best.params,
                           "val_loss": best.user_attrs.get("val_loss"), "epochs_run": best.user_attrs.get("epochs_run"),
                           "run_dir": best.user_attrs.get("run_dir"), "model": best.user_attrs.get("model")}
        summary["files"]["best_config"] = "best_config.yaml"
    if plots:
        summary["files"]["plots"] = {k: (str(Path(v).relative_to(study_dir)) if not v.startswith("not drawn") else v)
                                     for k, v in write_plots(study, study_dir / "plots").items()}
    return summary


def has_test_set(data: str | None, test_data: str | None) -> bool:
    if test_data:
        return True
    if not data:
        return False
    from ..data.dataset import is_cifar_source

    root = Path(data)
    return is_cifar_source(data) or ((root / "train").is_dir() and (root / "test").is_dir())


def evaluate_best_on_test(summary: dict, study_dir: Path, data: str | None, test_data: str | None) -> dict | None:
    """Touch the test set once: the best trial's model, evaluated at the end of the study.
    Not repeated for the same best trial (re-running the command reuses test/metrics.json)."""
    best = summary.get("best")
    if not best or not has_test_set(data, test_data):
        return None
    out = study_dir / "test"
    done = out / "metrics.json"
    if done.exists():
        old = json.loads(done.read_text())
        if old.get("trial") == best["trial"]:
            return old.get("test_result")
    model = best.get("model")
    if not model or not Path(model).is_file():
        return {"note": f"best model not on this machine ({model}); evaluate it where it was trained"}
    from ..evaluation.evaluator import evaluate

    results = evaluate(model, data, test_data, out_dir=out, verbose=False)
    test = results.get("test")
    result = {"accuracy": test["accuracy"], "loss": test["loss"], "n": test["n"], "trial": best["trial"]}
    meta = json.loads(done.read_text())
    meta["trial"], meta["test_result"] = best["trial"], result
    write_json(done, meta)
    return result


# ---------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------

@dataclass
class TuneResult:
    study_dir: Path
    study: str
    storage: str  # redacted
    counts: dict
    best: dict | None
    summary: dict
    workers: list[dict] = field(default_factory=list)


def _spawn_workers(n: int, spec: dict, study_dir: Path, threads: int | None) -> list[subprocess.Popen]:
    logs = study_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, IMGCLF_TUNE_SPEC=json.dumps(spec), PYTHONUNBUFFERED="1")
    if threads:
        env.update(IMGCLF_TUNE_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(min(2, threads)))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    procs = []
    for i in range(n):
        log = open(logs / f"worker-{i}.log", "a")
        procs.append(subprocess.Popen([sys.executable, "-m", "imgclf.tuning.tuner", "--worker", str(i)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def tune(space_file: str | Path | None = None, *, data: str | None = None, test_data: str | None = None,
         study: str | None = None, storage: str | None = None, workers: int = 1, resume: bool | str | Path = False,
         out_dir: str | Path | None = None, sampler: str | None = None, pruner: str | None = None,
         trials: int | None = None, epochs: int | None = None, time_budget=None, trial_time=None,
         base: dict | None = None, objective=None, test: bool = True, progress: bool = True,
         threads_per_worker: int | None = None, plots: bool = True, isolate: str | None = None,
         report: bool = True) -> TuneResult:
    """Run (or continue) a hyperparameter search. See the module docstring for the files written.

    `resume=True` continues the study named by the space file / --study (it must exist);
    `resume=STUDY_DIR` reads what it needs from STUDY_DIR/tune.json. Re-running on the same
    storage and study name also continues it: finished trials are never rerun.
    `objective`: None (train), "toy", "module:function" or a callable taking a TrialContext.
    `isolate`: "process" runs each trial in a fresh child process (default for the train
    objective: Keras/TensorFlow otherwise keep ~14 MiB per trial), "none" runs it in the worker.
    """
    t_start = time.perf_counter()
    saved = {}
    if resume and not isinstance(resume, bool):
        study_dir = Path(resume)
        tune_json = study_dir / "tune.json"
        if not tune_json.is_file():
            raise ConfigError(f"--resume {study_dir}: not a study directory (expected tune.json inside)")
        saved = json.loads(tune_json.read_text())
        out_dir = out_dir or study_dir
    if workers < 1:
        raise ConfigError(f"--workers: expected an integer >= 1, got {workers}")
    overrides = dict(sampler=sampler, pruner=pruner, trials=trials, epochs=epochs, time_budget=time_budget,
                     trial_time=trial_time, base_overrides=base)
    if space_file is not None:
        space = read_space(space_file, **overrides)
        source = str(space_file)
    elif saved:
        space = space_from_dict(saved["space"], saved.get("space_source", "tune.json"),
                                **{**overrides, "sampler": sampler or saved["space"]["sampler"],
                                   "pruner": pruner or saved["space"]["pruner"]})
        source = saved.get("space_source", "tune.json")
    else:
        raise ConfigError("space: no space file given (imgclf tune SPACE.yaml, or --resume STUDY_DIR)")
    data = data or saved.get("data") or space.base.get("data")
    test_data = test_data or saved.get("test_data") or space.base.get("test_data")
    fn, ref = resolve_objective(objective if objective is not None else saved.get("objective"))
    if fn is train_objective:
        if not data:
            raise ConfigError("--data: no dataset given (expected an image folder, a CIFAR-10 archive or 'cifar10')")
        from ..data.dataset import is_cifar_source

        if data != "cifar10" and not is_cifar_source(data) and not Path(data).is_dir():
            raise ConfigError(f"--data {data}: folder not found")
        if test_data and not Path(test_data).is_dir():
            raise ConfigError(f"--test-data {test_data}: folder not found")
    isolate = isolate or ("process" if fn is train_objective else "none")
    if isolate not in ("process", "none"):
        raise ConfigError(f"--isolate: expected process or none, got {quote(isolate)}")
    if isolate == "process" and ref is None:
        raise ConfigError("--isolate process: the objective must be importable (module:function)")
    if workers > 1 and ref is None:
        raise ConfigError("--workers: worker processes need an importable objective (module:function), "
                          "not a lambda or a function defined in __main__")
    name = study or saved.get("study") or space.study or Path(source).stem
    study_dir = Path(out_dir) if out_dir else DEFAULT_STUDY_ROOT / name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or saved.get("storage_url") or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if "***" in url:
        raise ConfigError(f"--resume: the study's storage {url} needs its password: pass --storage URL again")

    _quiet_optuna()
    rdb = open_storage(url, space)
    lock = StudyLock(url, name)
    with lock:
        the_study = open_study(rdb, name, space, create=not resume, data=data)
        if space.sampler == "grid":
            enqueue_grid(the_study, space)
    tune_json = {"study": name, "storage_url": redact(url), "space": space.to_dict(), "space_source": source,
                 "data": data, "test_data": test_data, "objective": ref}
    write_json(study_dir / "tune.json", tune_json)

    deadline = time.time() + space.time if space.time else None
    spec = {"space": space.to_dict(), "space_source": source, "storage": url, "study": name,
            "study_dir": str(study_dir.resolve()), "objective": ref, "data": data, "test_data": test_data,
            "deadline": deadline, "sys_path": _objective_path(fn), "isolate": isolate}
    mon = Progress(the_study, space, study_dir, enabled=progress)
    mon.update(force=True)
    worker_results: list[dict] = []
    if workers == 1:
        log_path = study_dir / "logs" / "worker-main.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)

        def log(msg):
            with open(log_path, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

        try:
            result = run_worker({**spec, "worker_id": "main"}, objective=fn, log=log, on_change=mon.update)
        except KeyboardInterrupt:
            print(f"interrupted: the running trial is marked failed and will be re-run; continue with "
                  f"imgclf tune --resume {study_dir}", file=sys.stderr)
            raise
        worker_results.append(result)
    else:
        threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        procs = _spawn_workers(workers, spec, study_dir, threads)
        try:
            while any(p.poll() is None for p in procs):
                mon.update()
                time.sleep(1.0)
        except KeyboardInterrupt:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            print(f"interrupted: running trials are marked failed and will be re-run; continue with "
                  f"imgclf tune --resume {study_dir}", file=sys.stderr)
            raise
        for i, p in enumerate(procs):
            worker_results.append({"worker": i, "returncode": p.returncode})
        bad = [r for r in worker_results if r["returncode"] not in (0, None)]
        if bad:
            tail = (study_dir / "logs" / f"worker-{bad[0]['worker']}.log").read_text().strip().splitlines()[-1:]
            print(f"warning: {len(bad)} worker(s) ended with an error; last line of worker-{bad[0]['worker']}.log: "
                  f"{tail[0] if tail else ''}", file=sys.stderr)
    counts = mon.update(force=True)
    summary = write_results(the_study, space, study_dir, data, test_data, plots=plots)
    summary["storage"] = redact(url)
    summary["workers"] = workers
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    finished = counts["waiting"] == 0 and counts["running"] == 0
    summary["finished"] = finished
    if test and finished and fn is train_objective:
        summary["test"] = evaluate_best_on_test(summary, study_dir, data, test_data)
    write_json(study_dir / "summary.json", summary)
    if report and counts["done"]:
        from ..report.build import make_report

        make_report(study_dir)  # study_dir/report.html: trials table, search plots, best trial
    if counts["done"] == 0 and counts["failed"]:
        reasons = [r.get("note") for r in trial_rows(the_study, space) if r["state"] == "fail" and r.get("note")]
        raise ImgclfError(f"study {name}: every trial failed ({reasons[0] if reasons else 'see logs'}; "
                          f"logs in {study_dir / 'logs'})")
    return TuneResult(study_dir, name, redact(url), counts, summary.get("best"), summary, worker_results)


def _objective_path(fn) -> list[str]:
    mod = sys.modules.get(getattr(fn, "__module__", ""), None)
    path = getattr(mod, "__file__", None)
    return [str(Path(path).resolve().parent)] if path else []


def print_summary(result: TuneResult) -> None:
    s = result.summary
    c = result.counts
    print(f"\nstudy {result.study} ({result.storage}): {c['complete']} complete, {c['pruned']} pruned, "
          f"{c['failed']} failed, {c['waiting']} waiting, {c['running']} running; wall {s['wall_seconds']:.0f} s")
    if result.best:
        b = result.best
        print(f"best: trial {b['trial']}  val_accuracy {b['val_accuracy']:.4f}  val_loss "
              f"{(b.get('val_loss') or float('nan')):.4f}  {_fmt_params(b['params'])}")
    p = s["pruning"]
    if p["pruned_trials"]:
        print(f"pruning: {p['pruned_trials']} trials stopped early, {p['epochs_saved']} epochs not run, "
              f"about {p['seconds_saved_estimate']:.0f} s saved ({100 * p['fraction_saved_estimate']:.0f}% of trial time)")
    if s.get("test"):
        t = s["test"]
        if "accuracy" in t:
            print(f"test set (touched once, best trial {t['trial']} only): accuracy {t['accuracy']:.4f}, "
                  f"loss {t['loss']:.4f} on {t['n']} images")
        else:
            print(f"test set: {t.get('note')}")
    d = result.study_dir
    plots = ", plots/*.png" if s["files"].get("plots") else ""
    print(f"written: {d}/trials.csv, trials.md, best_config.yaml, summary.json{plots}")
    if result.best:
        print(f"reproduce the best trial: imgclf train --config {d}/best_config.yaml")
    if not s.get("finished"):
        print(f"the study is not finished: continue it with imgclf tune --resume {d}")


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    """Add `imgclf tune` to the CLI's subparsers."""
    import argparse

    p = sub.add_parser("tune", help="hyperparameter search (grid / random / TPE) over a space file",
                       description="Search a space file's parameters with Optuna. Example space: "
                                   f"{example_space()}")
    p.add_argument("space", nargs="?", type=Path, help="space file (YAML); 'seed_cnn' = the shipped example")
    p.add_argument("--data", "-d", help="image folder or CIFAR-10 archive (overrides base.data)")
    p.add_argument("--test-data", help="separate test image folder (evaluated once, for the best trial)")
    p.add_argument("--study", help="study name (default: the space's study: or the file name)")
    p.add_argument("--storage", help="database URL shared by all workers (default: sqlite file in the study dir)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="STUDY_DIR",
                   help="continue an existing study (from STUDY_DIR/tune.json when given)")
    p.add_argument("--out", "-o", type=Path, help="study directory (default studies/<study>)")
    p.add_argument("--sampler", choices=SAMPLERS, help="default: the space's sampler, else grid")
    p.add_argument("--pruner", choices=PRUNERS, help="default: none for grid, median otherwise")
    p.add_argument("--trials", type=int, help="trial budget (default: the whole grid, or 20)")
    p.add_argument("--epochs", type=int, help="epochs per trial")
    p.add_argument("--time", dest="time_budget", help="wall-time budget, e.g. 2h: no new trial starts after it")
    p.add_argument("--trial-time", help="per-trial time budget, e.g. 90s (train's --time-budget)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                   help="override a base config field, e.g. --set limit_per_class=500")
    p.add_argument("--objective", help="MODULE:FUNCTION taking a TrialContext, or 'toy' (default: train)")
    p.add_argument("--threads-per-worker", type=int, help="CPU threads per worker (default cores / workers)")
    p.add_argument("--no-test", action="store_true", help="do not evaluate the best model on the test set")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they take a few seconds)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--isolate", choices=("process", "none"),
                   help="run each trial in a fresh process (default for training: memory stays flat)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_tune)
    del argparse


def cmd_tune(args) -> int:
    base = {}
    for pair in args.set:
        if "=" not in pair:
            raise ConfigError(f"--set: expected FIELD=VALUE, got {quote(pair)}")
        key, value = pair.split("=", 1)
        base[key.strip()] = load_yaml(value, f"--set {key.strip()}")
    space = args.space
    if space is not None and not space.exists() and (Path(__file__).parent / "spaces" / f"{space}.yaml").is_file():
        space = example_space(str(space))  # `imgclf tune seed_cnn`: the shipped example
    try:
        result = tune(space, data=args.data, test_data=args.test_data, study=args.study, storage=args.storage,
                      workers=args.workers, resume=args.resume, out_dir=args.out, sampler=args.sampler,
                      pruner=args.pruner, trials=args.trials, epochs=args.epochs, time_budget=args.time_budget,
                      trial_time=args.trial_time, base=base or None, objective=args.objective,
                      test=not args.no_test, progress=not args.quiet,
                      threads_per_worker=args.threads_per_worker, plots=not args.no_plots,
                      isolate=args.isolate, report=not args.no_report)
    except KeyboardInterrupt:
        return 130
    print_summary(result)
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(_worker_main())
    if "--trial" in sys.argv:
        sys.exit(_trial_main())
    from ..cli import main

    sys.exit(main(["tune", *sys.argv[1:]]))
