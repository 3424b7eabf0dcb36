"""The absl entry point: flags -> config -> strategy -> trainer -> controller (wiring only).

    python -m framework.main --experiment=digits_cnn --model_dir=runs/digits
    tapeline --experiment=digits_cnn --model_dir=runs/digits      (same app)

Bad flags, an unknown experiment, unknown or ill-typed config keys and an unwritable model_dir
exit with status 2 and one message, before TensorFlow builds anything.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any, Sequence

from absl import app, flags, logging

from framework.config import STRATEGIES
from framework.errors import first_line
from framework.smoke import SmokeError  # stdlib only: no TensorFlow before the flags are checked

FLAGS = flags.FLAGS

flags.DEFINE_string("experiment", None, "Registered experiment name.")
flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries, params.yaml, metrics.json.")
flags.DEFINE_enum("mode", "train_and_eval",
                  ["train_and_eval", "train", "eval", "lr_find", "inspect", "smoke", "cross_validate", "tune"],
                  "What to run.")
flags.DEFINE_integer("folds", 5, "--mode=cross_validate: number of folds K.", lower_bound=2)
flags.DEFINE_bool("find_label_issues", False, "--mode=cross_validate: rank likely label errors from the "
                                              "out-of-fold predictions with cleanlab (label_issues.csv).")
flags.DEFINE_multi_string("config_file", [], "YAML/JSON config file; repeatable, applied in order.")
flags.DEFINE_multi_string("params_override", [],
                          "'a.b=1,c.d=x' pairs or a YAML/JSON mapping; applied last (repeatable).")
flags.DEFINE_enum("strategy", None, list(STRATEGIES),
                  "Distribution strategy (overrides runtime.strategy).")
flags.DEFINE_string("tpu", None, "TPU address or name (runtime.tpu).")
flags.DEFINE_integer("num_gpus", None, "GPUs to use (runtime.num_gpus).", lower_bound=0)
flags.DEFINE_integer("cpu_replicas", None, "Split the CPU into N logical devices (runtime.cpu_replicas).",
                     lower_bound=0)
flags.DEFINE_string("sweep", None, "Sub-runs over values: 'optimizer.name=sgd,adam[;key=v1,v2]' "
                                    "(one sub-directory of --model_dir each; sweep.csv/.md/.png).")
# --- tune (--mode=tune; framework/tune.py)
flags.DEFINE_string("tune_storage", None, "Optuna storage URL of the study (default sqlite:///<model_dir>/study.db); "
                                          "a PostgreSQL/MySQL URL lets several machines share one study.")
flags.DEFINE_integer("tune_workers", 1, "--mode=tune: local worker processes on the same study (cores split "
                                        "between them).", lower_bound=1)
flags.DEFINE_multi_string("import", [], "Extra module (by module name, never a path) that registers "
                                        "experiments or components; repeatable.")



class UserError(Exception):
    """A mistake in flags or config: reported in one line, exit status 2."""


def resolve_config(*, experiment: str | None, imports: Sequence[str], config_files: Sequence[str],
                   overrides: Sequence[str], runtime_flags: dict[str, Any]) -> Any:
    """Imports modules, finds the experiment and resolves its config (no TensorFlow work)."""
    from framework import config as config_lib
    from framework import plugins, registry

    try:
        plugins.load_experiments()  # the built-in ones first: a user's duplicate name is the error
    except registry.RegistryError as e:
        raise UserError(f"{plugins.GROUP}: {e}") from None
    for name in imports:
        try:
            registry.import_module(name)
        except ModuleNotFoundError as e:
            raise UserError(f"--import: cannot import module {name!r} ({e}); got {name!r}") from None
        except registry.RegistryError as e:  # registers a name that is already taken
            raise UserError(f"--import={name}: {e}") from None
        except ValueError as e:  # a file path, not a module name
            raise UserError(str(e)) from None
    if not experiment:
        raise UserError(f"--experiment is required; registered: {', '.join(registry.EXPERIMENTS.names())}")
    if "/" in experiment or "\\" in experiment or experiment.endswith(".py"):
        raise UserError("--experiment takes a registered experiment name (register more with "
                        f"--import=MODULE), never a file path; got {experiment!r}")
    try:
        factory = registry.EXPERIMENTS.get(experiment)
    except KeyError as e:
        raise UserError(f"--experiment: {e}") from None
    base = factory()
    runtime_override = {k: v for k, v in runtime_flags.items() if v is not None}
    extra = (json.dumps({"runtime": runtime_override}),) if runtime_override else ()
    try:
        return config_lib.resolve(base, config_files=tuple(config_files), overrides=tuple(overrides) + extra)
    except config_lib.ConfigError as e:
        raise UserError(str(e)) from None


def check_model_dir(path: str | None) -> str:
    """Creates `path` and proves it writable, or raises UserError naming it."""
    if not path:
        raise UserError("--model_dir is required; got nothing")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--model_dir: cannot write to {path!r} ({e.strerror or e})") from None
    return path


def run(cfg: Any, *, model_dir: str, mode: str, hparams: dict | None = None,
        extra_hooks: Sequence[Any] = ()) -> dict[str, Any]:
    """Builds and runs one experiment; returns a summary (final step, last evaluation)."""
    from framework import config as config_lib
    from framework import distribute as dist

    try:
        dist.check_runtime(cfg.runtime)
    except ValueError as e:
        raise UserError(str(e)) from None
    if mode == "inspect":  # reads the data only: no strategy, no params.yaml, no checkpoint
        return _inspect(cfg, model_dir=model_dir)
    if cfg.runtime.cpu_replicas:
        dist.setup_logical_cpus(cfg.runtime.cpu_replicas)
    chief = dist.is_chief(cfg.runtime)
    if mode not in ("lr_find", "smoke") and chief:
        config_lib.save(cfg, os.path.join(model_dir, "params.yaml"))
    try:
        strategy = dist.make_strategy(cfg.runtime)
    except TimeoutError as e:
        # A bounded wait expired (docs/design.md#t8): a TensorFlow thread is still blocked in C++ and
        # would keep a normal exit waiting, so report and leave at once.
        print(f"tapeline: error: {e}", file=sys.stderr, flush=True)
        logging.flush()
        os._exit(3)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    logging.info("strategy: %s", dist.describe(strategy))
    if chief:
        return _run_built(cfg, strategy, model_dir=model_dir, mode=mode, hparams=hparams, extra_hooks=extra_hooks)
    # Non-chief multi-worker processes take part in every collective (saves included) but
    # write into a temporary directory that is removed: only the chief's outputs are real.
    scratch = tempfile.mkdtemp(prefix="tapeline-worker-")
    try:
        # Start from the chief's checkpoints (resume, eval): workers must restore the same step.
        for f in os.listdir(model_dir):
            if f == "checkpoint" or f.startswith("ckpt-"):
                shutil.copy2(os.path.join(model_dir, f), scratch)
        return _run_built(cfg, strategy, model_dir=scratch, mode=mode, hparams=hparams, extra_hooks=extra_hooks)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_built(cfg: Any, strategy: Any, *, model_dir: str, mode: str, hparams: dict | None,
               extra_hooks: Sequence[Any] = ()) -> dict[str, Any]:
    from framework import controller as controller_lib
    from framework import trainer as trainer_lib

    try:
        if mode == "smoke":
            from framework import smoke

            cfg = smoke.smoke_config(cfg)
        # Hooks first: their kwargs are checked before the (slower) data and model build.
        hooks = build_hooks(cfg.hooks) + list(extra_hooks)  # extra: the tuner's pruning hook
        trainer = trainer_lib.build(cfg, strategy)
    except (ValueError, KeyError) as e:  # config that only the data or model can refute
        raise UserError(str(e)) from None
    logging.info("parameter groups:\n%s", trainer.groups.format())
    if mode == "smoke":
        report = smoke.run(trainer, hooks=hooks, model_dir=model_dir)
        return {"step": report["step"], "smoke": report}
    if mode == "lr_find":
        from framework import lr_find

        return lr_find.run(trainer, model_dir=model_dir)
    import tensorflow as tf

    from framework import checkpoint as ckpt_lib
    from framework.hooks import export as export_lib

    ctl = controller_lib.Controller(trainer=trainer, model_dir=model_dir, hooks=hooks)
    restore_sigterm = ctl.handle_sigterm()
    if hparams:
        ctl.summaries.hparams(hparams)
    try:
        if mode == "eval":
            if ctl.restore() == 0 and not ctl.checkpointer.latest:
                raise UserError(f"--mode=eval: no checkpoint in --model_dir; got {model_dir!r}")
            return {"step": int(trainer.global_step.numpy()), "eval": ctl.evaluate()}
        step = ctl.train(evaluate=mode == "train_and_eval")
    except ckpt_lib.CheckpointError as e:  # unreadable / different-model checkpoints, a failed save
        raise UserError(str(e)) from None
    except (controller_lib.TestDataError, export_lib.ExportError) as e:
        # The test set of a finished run could not be read, or (before training) the export would not load.
        raise UserError(str(e)) from None
    except (OSError, tf.errors.OpError) as e:
        # A full or read-only model_dir met by another write (event files, metrics.json): one clear
        # line naming the file, not a traceback. Errors about anything else are not ours to hide.
        text = str(e) if isinstance(e, tf.errors.OpError) else f"{e.strerror or e}: {e.filename!r}"
        if os.path.abspath(model_dir) not in text and model_dir not in text:
            raise
        reason = first_line(text)
        raise UserError(f"cannot write to --model_dir {model_dir!r} ({reason}); the latest complete checkpoint "
                        f"is still {ctl.checkpointer.latest or 'none'}") from None
    finally:
        restore_sigterm()
    return {"step": step, "eval": ctl.last_eval, "history": ctl.eval_history, "test": ctl.test_metrics,
            "overfit": ctl.overfit, "controller": ctl,
            "stop_reason": ctl.ctx.stop_reason}


def _inspect(cfg: Any, *, model_dir: str) -> dict[str, Any]:
    """`--mode=inspect`: reads every configured split once; writes data_report.{json,md} and images."""
    from framework import losses as losses_lib
    from framework import trainer as trainer_lib
    from framework.data import inspect as inspect_lib
    from framework.data import pipeline

    t = cfg.task
    sections = {"train": t.train_data, "eval": t.eval_data, "test": getattr(t, "test_data", None)}
    arrays, sizes, augment, x_spec = {}, {}, None, None
    try:
        kind = losses_lib.section_label_kind(t.loss)
        for split, section in sections.items():
            if section is None or not section.name:
                continue
            key = f"task.{split}_data"
            ds, aug = trainer_lib.data_source(section, split, key)
            sizes[split] = pipeline.count(ds, name=key)
            limit = inspect_lib.read_limit(ds.element_spec, sizes[split], batch_size=section.batch_size,
                                           batches=cfg.trainer.preflight_batches)
            arrays[split] = inspect_lib.read_split(ds, limit=limit)
            if split == "train":
                augment, x_spec = aug, ds.element_spec[0]
        units, note = None, None
        try:
            units = trainer_lib.output_units(cfg, x_spec)
        except Exception as e:  # noqa: BLE001 - the user's model code; the report is useful without it
            note = f"the model could not be built ({type(e).__name__}: {first_line(e)})"
        report = inspect_lib.build_report(arrays, kind=kind, units=units, units_note=note, examples=sizes,
                                          compensated_by=trainer_lib.balancing(cfg))
        images, grids = inspect_lib.image_section(arrays["train"], kind=kind, augment=augment,
                                                  seed=cfg.trainer.seed)
    except (ValueError, KeyError) as e:  # a dataset the config names cannot be read
        raise UserError(str(e)) from None
    if images:
        report["splits"]["train"]["images"] = images
    json_path, md_path = inspect_lib.write_report(report, model_dir)
    logdir = os.path.join(model_dir, "inspect")
    inspect_lib.write_images(grids, logdir=logdir, text=inspect_lib.to_markdown(report))
    return {"report": json_path, "markdown": md_path, "images": sorted(grids), "logdir": logdir,
            "summary": inspect_lib.summary_lines(report), "warnings": report["warnings"]}


def build_hooks(hook_cfgs: Sequence[Any]) -> list[Any]:
    """Builds `hooks: [{name, every_n_steps?, ...kwargs}]` (every_n_steps is the framework's key)."""
    from framework import registry
    from framework.hooks import every_n_steps

    out = []
    for i, h in enumerate(hook_cfgs):
        kwargs = dict(h.kwargs)
        n = kwargs.pop("every_n_steps", None)
        hook = registry.build(registry.HOOKS, h.name, kwargs, section=f"hooks[{i}]")
        if not callable(hook):
            raise ValueError(f"hooks[{i}]: factory {h.name!r} must return a Hook or a callable hook(event, ctx); "
                             f"got {type(hook).__name__}")
        out.append(every_n_steps(n, hook) if n is not None else hook)
    return out


def main(argv: Sequence[str]) -> int:
    """The absl main: resolves the config and runs the mode; returns the exit status (2 for a user's mistake)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    try:
        cfg = resolve_config(experiment=FLAGS.experiment, imports=FLAGS["import"].value,
                             config_files=FLAGS.config_file, overrides=FLAGS.params_override,
                             runtime_flags={"strategy": FLAGS.strategy, "tpu": FLAGS.tpu,
                                            "num_gpus": FLAGS.num_gpus, "cpu_replicas": FLAGS.cpu_replicas})
        model_dir = check_model_dir(FLAGS.model_dir)
        if FLAGS.sweep and FLAGS.mode == "tune":
            raise UserError(f"--sweep: not with --mode=tune (use tune.sampler: grid); got --sweep={FLAGS.sweep!r}")
        if FLAGS.sweep:
            return _sweep(model_dir)
        if FLAGS.mode == "cross_validate":
            return _cross_validate(model_dir)
        if FLAGS.mode == "tune":
            return _tune(cfg, model_dir)
        result = run(cfg, model_dir=model_dir, mode=FLAGS.mode)
    except UserError as e:
        print(f"tapeline: error: {e}", file=sys.stderr)
        return 2
    except SmokeError as e:
        print(f"tapeline: {e}", file=sys.stderr)
        return 1
    if FLAGS.mode == "inspect":
        print("\n".join(result["summary"]))
        what = "report and image grids" if result["images"] else "report"
        print(f"tapeline: data report {result['report']} and {result['markdown']}; "
              f"TensorBoard ({what}): tensorboard --logdir {result['logdir']}")
        return 0
    if FLAGS.mode == "smoke":
        print(f"tapeline: smoke passed; {os.path.join(model_dir, 'smoke.json')} (nothing else kept)")
        return 0
    print(f"tapeline: done at step {result.get('step')}; TensorBoard logs: tensorboard --logdir {model_dir}")
    return 0


def _sweep(model_dir: str) -> int:
    from framework import sweep

    def run_one(override: str, sub_dir: str) -> dict[str, Any]:
        cfg = resolve_config(experiment=FLAGS.experiment, imports=FLAGS["import"].value,
                             config_files=FLAGS.config_file, overrides=[*FLAGS.params_override, override],
                             runtime_flags={"strategy": FLAGS.strategy, "tpu": FLAGS.tpu,
                                            "num_gpus": FLAGS.num_gpus, "cpu_replicas": FLAGS.cpu_replicas})
        combo = json.loads(override)
        flat = {k: v for k, v in _flatten(combo).items()}
        return run(cfg, model_dir=check_model_dir(sub_dir), mode=FLAGS.mode, hparams=flat)

    try:
        sweep.parse(FLAGS.sweep)
        # Every combination must resolve before the first sub-run starts.
        for combo in sweep.combinations(sweep.parse(FLAGS.sweep)):
            resolve_config(experiment=FLAGS.experiment, imports=FLAGS["import"].value,
                           config_files=FLAGS.config_file,
                           overrides=[*FLAGS.params_override, sweep.override(combo)], runtime_flags={})
        rows = sweep.run(text=FLAGS.sweep, model_dir=model_dir, run_one=run_one)
    except (ValueError, UserError) as e:
        print(f"tapeline: error: {e}", file=sys.stderr)
        return 2
    print(f"tapeline: sweep of {len(rows)} runs done; {os.path.join(model_dir, 'sweep.md')}; "
          f"TensorBoard logs: tensorboard --logdir {model_dir}")
    return 0


def _cross_validate(model_dir: str) -> int:
    from framework import cross_validate

    def resolve(override: dict) -> Any:
        return resolve_config(experiment=FLAGS.experiment, imports=FLAGS["import"].value,
                              config_files=FLAGS.config_file, overrides=[*FLAGS.params_override, json.dumps(override)],
                              runtime_flags={"strategy": FLAGS.strategy, "tpu": FLAGS.tpu,
                                             "num_gpus": FLAGS.num_gpus, "cpu_replicas": FLAGS.cpu_replicas})

    def run_one(override: dict, sub_dir: str) -> dict[str, Any]:
        return run(resolve(override), model_dir=check_model_dir(sub_dir), mode="train_and_eval")

    try:
        for i in range(FLAGS.folds):  # every fold's config resolves before the first sub-run starts
            resolve(cross_validate.fold_override(FLAGS.folds, i))
        report = cross_validate.run(folds=FLAGS.folds, model_dir=model_dir, run_one=run_one,
                                    find_label_issues=FLAGS.find_label_issues)
    except (ValueError, UserError) as e:
        print(f"tapeline: error: {e}", file=sys.stderr)
        return 2
    except cross_validate.Preempted as e:  # like a preempted run: stop now, the rerun resumes
        print(f"tapeline: {e}", file=sys.stderr)
        return 0
    means = ", ".join(f"{k} {v:.4f}" for k, v in report["mean"].items())
    print(f"tapeline: {FLAGS.folds}-fold cross-validation done (mean {means}); {os.path.join(model_dir, 'cv.md')}")
    return 0


def _tune(cfg: Any, model_dir: str) -> int:
    """--mode=tune: checks the tune section, opens the study, runs trials (here or in N workers)."""
    from framework import tune, tune_report

    def resolve(overrides: Sequence[str]) -> Any:
        try:
            return resolve_config(experiment=FLAGS.experiment, imports=FLAGS["import"].value,
                                  config_files=FLAGS.config_file, overrides=[*FLAGS.params_override, *overrides],
                                  runtime_flags={"strategy": FLAGS.strategy, "tpu": FLAGS.tpu,
                                                 "num_gpus": FLAGS.num_gpus, "cpu_replicas": FLAGS.cpu_replicas})
        except UserError as e:
            raise ValueError(str(e)) from None

    def run_trial(override: str, run_dir: str, hooks: Sequence[Any]) -> dict[str, Any]:
        return run(resolve([override]), model_dir=check_model_dir(run_dir), mode="train_and_eval",
                   extra_hooks=hooks)

    worker = os.environ.get(tune.WORKER_ENV)
    try:
        with tune.quiet_optuna():
            plan = tune.make_plan(cfg, experiment=FLAGS.experiment, resolve=resolve)
            storage = FLAGS.tune_storage or tune.default_storage(model_dir)
            study = tune.open_study(plan, storage)
            if worker is not None:
                label = tune.configure_worker_threads()
                logging.info("tune worker%s: study %r in %s", label, plan.study_name, storage)
                tune.work(study, plan, model_dir=model_dir, run_trial=run_trial, worker=f" worker {worker}")
                return 0
            logging.info("tune: study %r in %s; %d of %d trials finished; dashboard: optuna-dashboard %s",
                         plan.study_name, storage, tune.finished(study), plan.trials, storage)
            if FLAGS.tune_workers > 1:
                code = tune.launch_workers(FLAGS.tune_workers, sys.argv[1:])
                if code:
                    return code
            else:
                tune.work(study, plan, model_dir=model_dir, run_trial=run_trial)
            summary = tune_report.write_results(study, plan, model_dir)
    except (ValueError, UserError) as e:
        print(f"tapeline: error: {e}", file=sys.stderr)
        return 2
    best = summary["best"]
    c = summary["counts"]
    print(f"tapeline: tune: {c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} pruned, {c.get('FAIL', 0)} failed; "
          + (f"best trial {best['number']}: {plan.metric}={best['value']:.6g} {best['params']}; " if best else "")
          + f"{os.path.join(model_dir, 'tune.md')}, {os.path.join(model_dir, 'best_params.yaml')}")
    return 0


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, but a bad flag exits with status 2 like every other user error."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"tapeline: error: {e}\nPass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(2)


def entry() -> None:
    """Console script `tapeline` (and `python -m framework.main`)."""
    from framework import xla_cache

    xla_cache.configure()  # before TensorFlow starts: it reads TF_XLA_FLAGS only then
    # The per-loop log lines are the console's progress display: INFO on stderr by default.
    FLAGS.set_default("logtostderr", True)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
