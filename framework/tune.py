"""Hyperparameter search on Optuna: the `tune:` section checked, the study, its workers, results.

    python -m framework.main --experiment=optimizer_tuned --model_dir=runs/tuned --mode=tune
        [--tune_storage=sqlite:///runs/tuned/study.db] [--tune_workers=2]

Each trial is a normal run in `model_dir/trial=<n>/`: its sampled parameters are a config
override applied last, and a pruning hook reports every evaluation's metric to the trial (the
pruner may stop it there). The study lives in an Optuna RDB storage (SQLite in model_dir by
default; a PostgreSQL/MySQL URL lets several machines share it). Re-running the command
continues the study until it holds `tune.trials` finished (complete + pruned) trials:

- trials are admitted under a lock file in model_dir (local workers never overshoot), and a
  trial started in a race between machines finds itself surplus and ends as FAIL unrun;
- a trial whose process died is failed (at once when its process was on this host, else when
  its Optuna heartbeat goes stale) and re-queued with its parameters by Optuna's
  `RetryHeartbeatStaleTrialCallback`; the re-queued trial runs in the original trial's
  directory, so it resumes from that run's checkpoint. A failed trial is never counted.

Each trial directory also gets a TensorBoard HParams session; the study's report (tune.csv,
tune.md, best_params.yaml, tune.png) is framework/tune_report.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import inspect
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging

from framework import config as config_lib
from framework import registry
from framework.errors import first_line

WORKER_ENV = "TAPELINE_TUNE_WORKER"  # set in the processes `--tune_workers` starts
THREADS_ENV = "TAPELINE_TUNE_THREADS"
HEARTBEAT_S = 10  # Optuna heartbeat of a running trial; stale after GRACE_S without one
GRACE_S = 60
FINISHED = ("COMPLETE", "PRUNED")
_SPEC_FIELDS = {"type", "low", "high", "log", "step", "choices"}
_COMPONENTS = {"task.model": registry.MODELS, "task.train_data": registry.DATASETS,
               "task.eval_data": registry.DATASETS, "task.loss": registry.LOSSES,
               "optimizer": registry.OPTIMIZERS, "optimizer.schedule": registry.SCHEDULES}
_RESERVED = {"task.train_data": ("split",), "task.eval_data": ("split",), "optimizer": ("learning_rate",)}


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Param:
    """One entry of `tune.space`."""

    key: str
    type: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: list | None = None

    def suggest(self, trial: Any) -> Any:
        """The trial's value for this parameter, drawn by Optuna's `trial.suggest_*`."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """The values that bound the range (every choice of a categorical)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def grid(self) -> list[Any]:
        """Every value a grid search visits (today's --sweep: a list per key)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None:
            if self.type == "int":
                return list(range(self.low, self.high + 1))
            raise ValueError(f"tune.space.{self.key}: the grid sampler needs choices or a step for a float; "
                             f"got {self.spec_text()}")
        n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [self.low + i * self.step if self.type == "int" else round(self.low + i * self.step, 12)
                for i in range(n)]

    def spec_text(self) -> str:
        """The search range or choices as a short text (for the log and tune.md)."""
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "key"})


@dataclasses.dataclass
class Plan:
    """The checked `tune:` section."""

    metric: str
    direction: str  # maximize | minimize
    trials: int
    sampler: str
    sampler_kwargs: dict
    pruner: str
    pruner_kwargs: dict
    space: list[Param]
    study_name: str
    seed: int

    def override(self, params: Mapping[str, Any]) -> str:
        """Trial parameters as a nested config override (JSON, applied last)."""
        return json.dumps(nest(params))


def nest(flat: Mapping[str, Any]) -> dict:
    """{'a.b': 1, 'a.c': 2} -> {'a': {'b': 1, 'c': 2}}."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _name_and_kwargs(value: Any, key: str, known: Mapping[str, Any]) -> tuple[str, dict]:
    if isinstance(value, Mapping):
        kwargs = dict(value)
        name = kwargs.pop("name", None)
    else:
        name, kwargs = value, {}
    if name not in known:
        raise ValueError(f"{key}: expected one of {' | '.join(known)} (or {{name: ..., kwargs}}); got {value!r}")
    cls = known[name]()
    if kwargs:
        accepted = set(inspect.signature(cls).parameters)
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ValueError(f"{key}: unknown argument(s) {', '.join(unknown)} for {cls.__name__}; it accepts: "
                             f"{', '.join(sorted(accepted))}; got {value!r}")
    return name, kwargs


def _samplers() -> dict[str, Callable[[], type]]:
    import optuna

    return {"tpe": lambda: optuna.samplers.TPESampler, "random": lambda: optuna.samplers.RandomSampler,
            "grid": lambda: optuna.samplers.GridSampler}


def _pruners() -> dict[str, Callable[[], type]]:
    import optuna

    return {"median": lambda: optuna.pruners.MedianPruner, "hyperband": lambda: optuna.pruners.HyperbandPruner,
            "none": lambda: optuna.pruners.NopPruner}


def _number(v: Any, key: str, want: str) -> Any:
    if isinstance(v, str):  # YAML 1.1 reads '1e-4' (no dot) as a string: accept it as the number it is
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key}: expected {want}; got {v!r}")
    if want == "an integer" and not float(v).is_integer():
        raise ValueError(f"{key}: expected {want}; got {v!r}")
    return int(v) if want == "an integer" else float(v)


def parse_param(key: str, spec: Any) -> Param:
    """Checks one `tune.space` entry (type, fields, range) and returns it."""
    where = f"tune.space.{key}"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected {{type: float|int|categorical, ...}}; got {spec!r}")
    unknown = sorted(set(spec) - _SPEC_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(_SPEC_FIELDS))}; "
                         f"got {dict(spec)!r}")
    kind = spec.get("type")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or any(
                c is not None and not isinstance(c, (str, int, float, bool)) for c in choices):
            raise ValueError(f"{where}.choices: expected a non-empty list of scalars; got {choices!r}")
        return Param(key=key, type=kind, choices=list(choices))
    if kind not in ("float", "int"):
        raise ValueError(f"{where}.type: expected float | int | categorical; got {kind!r}")
    want = "an integer" if kind == "int" else "a number"
    for f in ("low", "high"):
        if f not in spec:
            raise ValueError(f"{where}.{f}: expected {want}; got nothing")
    low, high = _number(spec["low"], f"{where}.low", want), _number(spec["high"], f"{where}.high", want)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}.log: expected true | false; got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{where}.step", want)
        if step <= 0:
            raise ValueError(f"{where}.step: expected a number > 0; got {step!r}")
        if log and kind == "float":
            raise ValueError(f"{where}: expected step or log, not both; got step={step!r}, log=true")
    if low > high:
        raise ValueError(f"{where}: expected low <= high; got low={low!r}, high={high!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0; got low={low!r}, high={high!r}")
    return Param(key=key, type=kind, low=low, high=high, log=log, step=step)


def eval_metric_names(cfg: config_lib.ExperimentConfig) -> list[str]:
    """The names an evaluation logs: 'loss' and every configured metric (`<output>/...` per output)."""
    def keys(entries: Any) -> list[str]:
        entries = [entries] if isinstance(entries, (str, Mapping)) and not _per_output(entries) else entries
        out = []
        for e in entries or []:
            out.append(e if isinstance(e, str) else str(e.get("alias") or e.get("name")))
        return out

    metrics = cfg.task.metrics
    if _per_output(metrics):
        names = ["loss"] + [f"{o}/loss" for o in metrics]
        return names + [f"{o}/{k}" for o, entries in metrics.items() for k in keys(entries)]
    return ["loss", *keys(metrics)]


def _per_output(metrics: Any) -> bool:
    return isinstance(metrics, Mapping) and "name" not in metrics


def make_plan(cfg: config_lib.ExperimentConfig, *, experiment: str,
              resolve: Callable[[Sequence[str]], config_lib.ExperimentConfig]) -> Plan:
    """Checks the `tune:` section against the config before any trial runs.

    Args:
      cfg: the resolved experiment config (flags and files applied).
      experiment: its name (the default study name).
      resolve: extra overrides -> the config they give (raises ValueError on a bad one).

    Raises:
      ValueError: "<key>: expected X; got Y" for a bad metric, direction, trial count, sampler,
        pruner or space entry (unknown key, wrong type, low > high, log with a bound <= 0).
    """
    t = cfg.tune
    if not t.space:
        raise ValueError("tune.space: expected at least one {dotted.key: {type, ...}}; got {}")
    if not cfg.task.eval_data.name:
        raise ValueError("task.eval_data.name: --mode=tune needs an eval dataset (the metric comes from it); got ''")
    names = eval_metric_names(cfg)
    if t.metric not in names:
        raise ValueError(f"tune.metric: expected a metric the evaluation produces ({', '.join(names)}); "
                         f"got {t.metric!r}")
    direction = t.direction
    if direction == "auto":
        lossy = any(k in t.metric for k in ("loss", "error", "mse", "mae"))
        direction = "minimize" if lossy else "maximize"
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"tune.direction: expected maximize | minimize | auto; got {t.direction!r}")
    if t.trials < 1:
        raise ValueError(f"tune.trials: expected an integer >= 1; got {t.trials!r}")
    sampler, sampler_kwargs = _name_and_kwargs(t.sampler, "tune.sampler", _samplers())
    pruner, pruner_kwargs = _name_and_kwargs(t.pruner, "tune.pruner", _pruners())
    space = [parse_param(str(k), v) for k, v in t.space.items()]
    for p in space:
        _check_key(cfg, p.key)
    _check_corners(space, resolve)
    trials = t.trials
    if sampler == "grid":
        size = math.prod(len(p.grid()) for p in space)
        if trials > size:
            logging.info("tune: the grid has %d combinations; running %d trials, not tune.trials=%d", size, size,
                         trials)
        trials = min(trials, size)
    return Plan(metric=t.metric, direction=direction, trials=trials, sampler=sampler, sampler_kwargs=sampler_kwargs,
                pruner=pruner, pruner_kwargs=pruner_kwargs, space=space, study_name=t.study_name or experiment,
                seed=cfg.trainer.seed)


def _check_key(cfg: Any, key: str) -> None:
    """A dotted space key names a config value: a dataclass field, or a kwarg its component accepts."""
    node, path = cfg, ""
    parts = key.split(".")
    for part in parts:
        if not dataclasses.is_dataclass(node):
            raise ValueError(f"tune.space: unknown config key {key!r}; {path!r} is a value, not a section")
        fields = [f.name for f in dataclasses.fields(node)]
        if part in fields and part != "kwargs":
            node, path = getattr(node, part), f"{path}.{part}" if path else part
            continue
        if isinstance(node, config_lib.Component) and path in _COMPONENTS:
            factory = _COMPONENTS[path].get(node.name)
            accepted, var_kw = registry.accepted_kwargs(factory)
            accepted -= set(_RESERVED.get(path, ()))
            if var_kw or part in accepted:
                return
            valid = sorted(set(fields) - {"kwargs"} | accepted)
        else:
            valid = sorted(fields)
        raise ValueError(f"tune.space: unknown config key {key!r}{config_lib.did_you_mean(part, valid)}; "
                         f"valid keys at {path or 'the top level'}: {', '.join(valid)}")
    if dataclasses.is_dataclass(node):
        raise ValueError(f"tune.space: {key!r} is a config section, not a value; got {key!r}")


def _check_corners(space: Sequence[Param], resolve: Callable[[Sequence[str]], Any]) -> None:
    """Every bound and every choice of every key resolves (types, registered names, kwargs)."""
    first = {p.key: p.corners()[0] for p in space}
    for p in space:
        for value in p.corners():
            params = {**first, p.key: value}
            try:
                cfg = resolve([json.dumps(nest(params))])
                for path, reg in _COMPONENTS.items():
                    section = cfg
                    for part in path.split("."):
                        section = getattr(section, part)
                    if section.name and any(k.startswith(path + ".") for k in params):
                        registry.check_kwargs(reg.get(section.name), section.kwargs, section=path,
                                              reserved=_RESERVED.get(path, ()),
                                              section_keys=config_lib.own_keys(section))
            except (ValueError, KeyError) as e:
                raise ValueError(f"tune.space.{p.key}: the value {value!r} does not fit the config: {e}") from None


# ----------------------------------------------------------------------------- the study


def default_storage(model_dir: str) -> str:
    """`sqlite:///<model_dir>/study.db` (absolute, so workers in other directories agree)."""
    return f"sqlite:///{os.path.abspath(os.path.join(model_dir, 'study.db'))}"


def open_study(plan: Plan, storage_url: str) -> Any:
    """Creates or loads the study `plan.study_name` in `storage_url` (with trial heartbeats).

    Raises:
      ValueError: an unusable storage URL, or an existing study with the other direction.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine = {"connect_args": {"timeout": 120}} if storage_url.startswith("sqlite") else None
    try:
        storage = optuna.storages.RDBStorage(
            storage_url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                inherit_intermediate_values=True))
        study = optuna.create_study(storage=storage, study_name=plan.study_name, direction=plan.direction,
                                    load_if_exists=True, sampler=_sampler(plan, 0), pruner=_pruner(plan))
    except (ValueError, ImportError, optuna.exceptions.OptunaError) as e:
        raise ValueError(f"--tune_storage: expected an Optuna RDB URL (sqlite:///..., postgresql://..., "
                         f"mysql://...); got {storage_url!r} ({first_line(e)})") from None
    except Exception as e:  # SQLAlchemy's errors: one line naming the URL, no traceback
        if type(e).__module__.split(".")[0] != "sqlalchemy":
            raise
        raise ValueError(f"--tune_storage: expected a reachable Optuna RDB URL (sqlite:///..., postgresql://..., "
                         f"mysql://...); got {storage_url!r} ({first_line(e)})") from None
    if study.direction.name.lower() != plan.direction:
        raise ValueError(f"tune.direction: study {plan.study_name!r} in {storage_url} is "
                         f"{study.direction.name.lower()}; got {plan.direction!r}")
    return study


def _sampler(plan: Plan, index: int) -> Any:
    """The sampler for the `index`-th trial of the study (its own seed: reproducible, never shared)."""
    cls = _samplers()[plan.sampler]()
    kwargs = dict(plan.sampler_kwargs)
    if plan.sampler == "grid":
        # One grid order for every process (Optuna's advice for distributed grid search).
        return cls({p.key: p.grid() for p in plan.space}, seed=kwargs.get("seed", plan.seed))
    kwargs.setdefault("seed", plan.seed + index)
    return cls(**kwargs)


def _pruner(plan: Plan) -> Any:
    return _pruners()[plan.pruner]()(**plan.pruner_kwargs)


class _Lock:
    """An exclusive lock file that the trial releases once it exists (admission, not the run)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held across calls
        fcntl.flock(self._f, fcntl.LOCK_EX)

    def release(self) -> None:
        if not self._f.closed:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()


class _Surplus(Exception):
    """A trial created after the study was full (a race between machines): ends as FAIL, unrun."""


class _Interrupted(Exception):
    """The trial's run was preempted (SIGTERM): failed now, re-queued to resume from its checkpoint."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry(study: Any, number: int) -> None:
    """Re-queues trial `number` with its parameters (and its directory) through Optuna's callback."""
    import optuna

    frozen = study.get_trials(deepcopy=True)[number]
    optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, frozen)


def fail_dead_trials(study: Any) -> list[int]:
    """Fails RUNNING trials whose process on this host is gone and re-queues them; returns their numbers.

    Trials of other hosts are left to Optuna's heartbeat (`fail_stale_trials`, run before each trial).
    """
    import optuna

    host = socket.gethostname()
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        if owner.get("host") == host and not _alive(int(owner.get("pid", -1))):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            _retry(study, t.number)
            logging.warning("tune: trial %d was interrupted (process %s is gone): failed and re-queued; its run "
                            "resumes from its last checkpoint in %s", t.number, owner.get("pid"),
                            t.user_attrs.get("run_dir", "?"))
            out.append(t.number)
    return out


def counts(study: Any) -> dict[str, int]:
    """Trials of the study by state name (COMPLETE, PRUNED, RUNNING, WAITING, FAIL)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def finished(study: Any) -> int:
    """How many trials of the study are finished (complete or pruned)."""
    c = counts(study)
    return sum(c.get(s, 0) for s in FINISHED)


def _surplus(study: Any, number: int, limit: int) -> bool:
    """Whether the study already holds `limit` trials ahead of trial `number` (finished or running earlier)."""
    ahead = 0
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            continue
        if t.state.name in FINISHED or (t.state.name == "RUNNING" and t.number < number):
            ahead += 1
    return ahead >= limit


RunTrial = Callable[[str, str, Sequence[Any]], dict]  # (override, run_dir, extra hooks) -> run summary


def work(study: Any, plan: Plan, *, model_dir: str, run_trial: RunTrial, worker: str = "") -> int:
    """Runs trials of `study` until it holds `plan.trials` finished ones; returns how many ran here."""
    ran = 0
    lock_path = os.path.join(model_dir, "tune.lock")
    while True:
        lock = _Lock(lock_path)
        state: dict[str, Any] = {}
        try:
            if not _room_for_more(study, plan, worker):
                break
            study.sampler = _sampler(plan, len(study.get_trials(deepcopy=False)))

            def objective(trial: Any, lock: _Lock = lock, state: dict = state) -> float:
                lock.release()  # the trial exists: others may be admitted while it runs
                state["number"] = trial.number
                return _objective(trial, study=study, plan=plan, model_dir=model_dir, run_trial=run_trial,
                                  worker=worker)

            study.optimize(objective, n_trials=1, catch=(_Surplus, _Interrupted), gc_after_trial=True)
        finally:
            lock.release()
        number = state.get("number")
        if number is None:
            continue
        frozen = study.get_trials(deepcopy=False)[number]
        if frozen.user_attrs.get("note", "").startswith("surplus"):
            continue
        ran += 1
        if frozen.state.name == "FAIL":  # preempted: queue it again (it resumes from its checkpoint), stop
            _retry(study, number)
            logging.warning("tune%s: trial %d was preempted; re-queued, stopping", worker, number)
            break
    return ran


def _room_for_more(study: Any, plan: Plan, worker: str) -> bool:
    """Under the lock: fails dead local trials, then whether finished + running < trials."""
    fail_dead_trials(study)
    c = counts(study)
    done, running = sum(c.get(s, 0) for s in FINISHED), c.get("RUNNING", 0)
    if done + running < plan.trials:
        return True
    if running:
        logging.info("tune%s: %d trials finished, %d running in other processes; nothing left here",
                     worker, done, running)
    return False


def _objective(trial: Any, *, study: Any, plan: Plan, model_dir: str, run_trial: RunTrial, worker: str) -> float:
    """One trial: its parameters, its run directory (the original one for a retry), the run, its value."""
    import optuna

    from framework.controller import NonFiniteError
    from framework.hooks.pruning import PruningHook

    trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})
    if _surplus(study, trial.number, plan.trials):
        trial.set_user_attr("note", "surplus: the study was full when this trial started")
        raise _Surplus(f"trial {trial.number}: the study already holds {plan.trials} trials")
    params = {p.key: p.suggest(trial) for p in plan.space}
    frozen = study.get_trials(deepcopy=False)[trial.number]
    origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    name = f"trial={origin if origin is not None else trial.number}"
    trial.set_user_attr("run_dir", name)
    if origin is not None:
        trial.set_user_attr("note", f"retry of trial {origin} (resumed in {name})")
    run_dir = os.path.join(model_dir, name)
    trial.set_user_attr("start_step", latest_step(run_dir))
    write_hparams_session(run_dir, params, trial_id=name)
    logging.info("tune%s: trial %d in %s: %s", worker, trial.number, name,
                 ", ".join(f"{k}={v}" for k, v in params.items()))
    hook = PruningHook(trial=trial, metric=plan.metric)
    try:
        result = run_trial(plan.override(params), run_dir, [hook])
    except NonFiniteError as e:
        # A diverged run is a bad result, not a broken trial: pruned, so TPE learns from it.
        trial.set_user_attr("note", f"diverged: {e}")
        raise optuna.TrialPruned(str(e)) from None
    trial.set_user_attr("steps", int(result.get("step") or 0))
    if str(result.get("stop_reason", "")).startswith("preempted"):
        raise _Interrupted(f"trial {trial.number} preempted at step {result.get('step')}")
    if hook.pruned_at is not None:
        raise optuna.TrialPruned(f"at step {hook.pruned_at}: {plan.metric}={hook.value:.6g}")
    return float((result.get("eval") or {})[plan.metric])


def latest_step(run_dir: str) -> int:
    """The step of the newest checkpoint in `run_dir` (0 if none): where a (re)started trial begins."""
    path = os.path.join(run_dir, "checkpoint")
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("model_checkpoint_path:"):
                tail = line.split("ckpt-")[-1].strip().strip('"')
                return int(tail) if tail.isdigit() else 0
    return 0


# ----------------------------------------------------------------------------- workers


def core_split(workers: int, cores: Sequence[int]) -> list[list[int]]:
    """`workers` disjoint shares of `cores` (round robin; shared cores only when workers > cores)."""
    cores = list(cores)
    if workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(workers)]
    return [cores[i::workers] for i in range(workers)]


def launch_workers(workers: int, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
    """Starts `workers` processes of `python -m framework.main argv` on the same study; waits for all.

    Each gets a disjoint share of this process's cores (CPU affinity) and as many TensorFlow
    intra-op threads (one inter-op thread). Returns 0, or the first non-zero exit status.
    """
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    shares = core_split(workers, cores)
    logging.info("tune: %d worker processes on %d cores; %s", workers, len(cores),
                 "; ".join(f"worker {i}: cpu {','.join(map(str, s))}, {len(s)} intra-op / 1 inter-op thread"
                           for i, s in enumerate(shares)))
    procs = []
    for i, share in enumerate(shares):
        child_env = dict(env or os.environ)
        n = str(len(share))
        child_env.update({WORKER_ENV: str(i), THREADS_ENV: n, "OMP_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n,
                          "TF_NUM_INTEROP_THREADS": "1"})
        pre = (lambda s=share: os.sched_setaffinity(0, s)) if hasattr(os, "sched_setaffinity") else None
        procs.append(subprocess.Popen([sys.executable, "-m", "framework.main", *argv], env=child_env,
                                      preexec_fn=pre))  # noqa: PLW1509 - only sets the affinity
    # A preemption of this process (SIGTERM) reaches the workers: each checkpoints its trial and
    # re-queues it, so the next run resumes it.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs])
    try:
        codes = [p.wait() for p in procs]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    bad = [c for c in codes if c != 0]
    return bad[0] if bad else 0


def configure_worker_threads() -> str:
    """In a worker: TensorFlow's thread pools sized to its share of cores; returns a log text."""
    n = os.environ.get(THREADS_ENV)
    if not n:
        return ""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(n))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as e:  # the runtime already started: TF_NUM_*_THREADS from the environment hold
        logging.warning("tune: thread pools already set up (%s); using TF_NUM_INTRAOP_THREADS=%s", e,
                        os.environ.get("TF_NUM_INTRAOP_THREADS"))
    return f" {os.environ.get(WORKER_ENV)} ({n} intra-op / 1 inter-op thread)"


def write_hparams_session(run_dir: str, params: Mapping[str, Any], trial_id: str) -> None:
    """One TensorBoard HParams session for a trial, in its directory (its eval/ and train/ are the metrics)."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    os.makedirs(run_dir, exist_ok=True)
    clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in params.items()}
    w = tf.summary.create_file_writer(run_dir)
    with w.as_default():
        hp.hparams(clean, trial_id=trial_id)
    w.close()


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's experimental-feature warnings off (heartbeats, the matplotlib plots)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
