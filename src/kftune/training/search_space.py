"""The hyperparameter search space: a JSON document a user can type into the KFP UI.

Each key is a training option; its value is a range or a list of choices::

    {
      "learning_rate": {"low": 3e-5, "high": 2e-4, "log": true},
      "per_device_train_batch_size": [16, 32],
      "warmup_ratio": {"low": 0.0, "high": 0.2},
      "num_train_epochs": {"low": 2, "high": 4}
    }

A range ``{"low", "high"}`` takes ``"log": true`` (sample on a log scale; learning rates)
and ``"step"`` (values on a lattice); integer options (epochs, batch size, ...) sample
integers. Grid search needs finitely many values: a range gives ``"grid"`` points (default
3, log-spaced when ``log``), a list its choices. A list ``[a, b]`` is short for
``{"choices": [a, b]}``. :func:`parse_space` checks all of it before any trial starts.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, fields

from kftune.errors import ConfigError
from kftune.settings.catalog import settings_of
from kftune.tasks import TASKS
from kftune.training.config import Adapters, TrainConfig

# What a search may vary, and each option's type: the settings of TrainConfig declared setting(..., searchable=True).
SEARCHABLE: dict[str, type] = {s.name: s.type for s in settings_of(TrainConfig) if s.searchable}
LORA_OPTIONS = tuple(name for name in SEARCHABLE if name in {f.name for f in fields(Adapters)})
DEFAULT_GRID_POINTS = 3

@dataclass(frozen=True)
class Param:
    """One searched option: a float/int range or a list of choices."""

    name: str
    kind: str
    """``float``, ``int`` or ``categorical``."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    grid: int = DEFAULT_GRID_POINTS

    def grid_values(self) -> list:
        """The values grid search tries, low to high (or the choices in order)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is not None:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            values = [self.low + i * self.step for i in range(count)]
            if count > self.grid:  # thin the lattice to `grid` evenly spread points
                values = [values[round(i * (count - 1) / (self.grid - 1))] for i in range(self.grid)]
        elif self.grid == 1:
            values = [math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2]
        elif self.log:
            ratio = (self.high / self.low) ** (1 / (self.grid - 1))
            values = [self.low * ratio**i for i in range(self.grid)]
        else:
            values = [self.low + i * (self.high - self.low) / (self.grid - 1) for i in range(self.grid)]
        if self.kind == "int":
            values = [int(round(v)) for v in values]
        else:
            values = [float(f"{v:.6g}") for v in values]
        return list(dict.fromkeys(values))  # integer rounding can repeat a value

    def sample(self, rng) -> object:
        """One value drawn uniformly (log-uniformly when ``log``) with ``rng`` (random.Random)."""
        if self.kind == "categorical":
            return self.choices[rng.randrange(len(self.choices))]
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.step is not None:
            value = self.low + round((value - self.low) / self.step) * self.step
        if self.kind == "int":
            return int(round(value))
        return float(f"{value:.6g}")

    def suggest(self, trial) -> object:
        """The value for an Optuna trial (TPE and friends)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def grid(self) -> list[dict]:
        """Every combination of the parameters' grid values, in a fixed order."""
        names = self.names
        axes = [p.grid_values() for p in self.params]
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes)]

    def sample(self, rng) -> dict:
        return {p.name: p.sample(rng) for p in self.params}

    def suggest(self, trial) -> dict:
        return {p.name: p.suggest(trial) for p in self.params}

    def to_json(self) -> str:
        doc = {}
        for p in self.params:
            if p.kind == "categorical":
                doc[p.name] = list(p.choices)
            else:
                doc[p.name] = {"low": p.low, "high": p.high, "log": p.log, "grid": p.grid}
                if p.step is not None:
                    doc[p.name]["step"] = p.step
        return json.dumps(doc)


def apply_hyperparameters(config, values: dict):
    """``config`` (a TrainConfig) with searched options replaced by ``values``, type-checked."""
    from dataclasses import replace

    unknown = sorted(set(values) - set(SEARCHABLE))
    if unknown:
        raise ConfigError(f"hyperparameters: {unknown} are not searchable options ({', '.join(SEARCHABLE)})")
    typed = {name: _check_value(f"hyperparameters: {name}", SEARCHABLE[name], v) for name, v in values.items()}
    config = replace(config, **typed)
    config.validate()
    return config


def parse_space(text: str | dict, training_mode: str = "full") -> SearchSpace:
    """Parse and check a search space (JSON text or an already decoded dict)."""
    if isinstance(text, dict):
        doc = text
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"search space: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    if not isinstance(doc, dict) or not doc:
        raise ConfigError('search space: expected a non-empty JSON object like {"learning_rate": {"low": 1e-5, '
                          '"high": 1e-4, "log": true}}')
    params = []
    for name, spec in doc.items():
        if name not in SEARCHABLE:
            raise ConfigError(f"search space: {name!r} cannot be searched; searchable options: {', '.join(SEARCHABLE)}")
        if name in LORA_OPTIONS and training_mode not in ("lora", "qlora"):
            raise ConfigError(f"search space: {name} is searched but training_mode is {training_mode!r}, not 'lora'")
        params.append(_parse_param(name, spec))
    return SearchSpace(tuple(params))


def _parse_param(name: str, spec) -> Param:
    kind = SEARCHABLE[name]
    where = f"search space: {name}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f'{where}: expected {{"low": ..., "high": ...}} or a list of choices, got {spec!r}')
    unknown = set(spec) - {"low", "high", "log", "step", "grid", "choices"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: low, high, log, step, grid, choices)")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        values = tuple(_check_value(where, kind, v) for v in choices)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: choices repeat a value: {list(values)}")
        for v in values:
            _check_range(name, v)
        return Param(name, "categorical", choices=values)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high = _check_value(where, kind, spec["low"]), _check_value(where, kind, spec["high"])
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    _check_range(name, low)
    _check_range(name, high)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _check_value(where, kind, step)
        if step <= 0 or step > high - low:
            raise ConfigError(f"{where}: step must be in (0, high - low], got {step}")
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined")
    grid = spec.get("grid", DEFAULT_GRID_POINTS)
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise ConfigError(f"{where}: grid (points for grid search) must be an integer >= 1, got {grid!r}")
    return Param(name, kind.__name__, low=low, high=high, log=log, step=step, grid=grid)


def _check_value(where: str, kind: type, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _check_range(name: str, value) -> None:
    """Values TrainConfig would reject, reported as a search-space error up front (a task's own setting, such as
    dpo's beta, checked as that task's)."""
    owner = next((task.name for task in TASKS.values() for group in task.settings.get("train", ())
                  if name in {f.name for f in fields(group)}), None)
    try:
        TrainConfig(**{name: value}, **({"task": owner} if owner else {})).validate()
    except ConfigError as e:
        raise ConfigError(f"search space: {name}: {e}") from e
