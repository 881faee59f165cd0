"""The eval harness: `python -m vlm_jax.evaluate --workdir RUN [--step N | --all-checkpoints] [--tasks ...]`.

Runs every evaluator that fits the run's model (or the `--tasks` asked for) on the chosen checkpoints and
writes one JSON record per (run, checkpoint step, dataset, task):
  RUN/eval_records/step_<N>/<dataset>/<task>.json
holding the metrics, the number of examples, the wall time, the config (flattened) and its hash, and the
preprocessing used. A record is written atomically as soon as its task finishes, so a crash loses no
finished record; a record that exists is not computed again (`force=True` recomputes it), so running twice
adds nothing. `vlm_jax.tables` reads these records.
"""

import copy
import datetime
import hashlib
import json

import jax

from vlm_jax import config_utils, storage
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.core import checkpoint
from vlm_jax.errors import ConfigError
from vlm_jax.eval import suite
from vlm_jax.eval.runner import EvalRunner
from vlm_jax.registry import EVALUATORS

RECORDS = "eval_records"


def flatten(tree, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def config_hash(config) -> str:
  return hashlib.sha256(
    json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
  ).hexdigest()[:16]


def dataset_name(config, task_config=None) -> str:
  """The records' dataset folder: the task's own `data` (fields it lacks from the run's) or the run's."""
  data = dict(config.data.to_dict(), **dict((task_config or {}).get("data") or {}))
  if data["name"] == "embedded":
    objects = f"_objects{data.get('max_objects', 1)}" if data.get("max_objects", 1) > 1 else ""
    return f"embedded_{data['image_size']}px{objects}"
  if data["name"] == "tfds":
    return f"tfds_{data.get('tfds_name', '')}"
  if data.get("path") and data["name"] in ("folder", "prepared"):
    return f"{data['name']}_{storage.basename(data['path'])}"
  return data["name"]


def fitting_tasks(config, model, requested=None, *, optional=(), benchmark=None) -> dict:
  """{task: evaluator config}: the requested tasks (an error if one does not fit, except those in
  `optional`, which are left out), else all that fit. Tasks are evaluators on the run's data, the run
  config's own evals (e.g. evals.flowers = dict(name="linear_probe", data=...)), or standard benchmark
  tasks (`suite.TASKS`), whose configs `benchmark(task)` gives."""
  evals = config.get("evals", {}) or {}
  benchmark = benchmark or (lambda task: suite.task_config(task, ""))
  evaluator = lambda task: (
    suite.TASKS[task]["name"] if task in suite.TASKS else (evals.get(task) or {}).get("name", task)
  )
  own_evals = [k for k in evals if k not in EVALUATORS.names()]
  # Each evaluator declares the model methods it calls (`needs`, or the `method` its config names).
  method = lambda task: (evals.get(task) or {}).get("method")
  needs = lambda task: (method(task),) if method(task) else EVALUATORS.get(evaluator(task)).needs
  fits = lambda task: all(hasattr(model, m) for m in needs(task))
  for task in requested or ():
    if task not in suite.TASKS and evaluator(task) not in EVALUATORS.names():
      raise ConfigError(
        f"unknown task {task!r}; tasks on the run's data: {', '.join(EVALUATORS.names())}; "
        f"the run's own evals: {', '.join(own_evals) or 'none'}; standard benchmarks: "
        f"{', '.join(suite.TASKS)}"
      )
    if not fits(task) and task not in optional:
      raise ConfigError(
        f"task {task!r} does not fit model {config.model.name!r} (it needs "
        f"{', '.join(needs(task))})"
      )
  everything = list(EVALUATORS.names()) + own_evals
  chosen = [t for t in (requested or everything) if fits(t)]

  def settings(task):
    if task in suite.TASKS:
      own = benchmark(task)
      defaults = EVALUATORS.get(own["name"]).defaults
      return {**{k: v for k, v in defaults.items() if k != "label_keys"}, **own}
    return task_settings(config, task)

  return {t: settings(t) for t in chosen}


def task_settings(config, task: str) -> dict:
  """The settings of one of the run's own tasks (an evaluator on its data, or a key of its `evals`): the
  evaluator's defaults under the config's, without the training cadence."""
  own = {k: v for k, v in ((config.get("evals", {}) or {}).get(task) or {}).items() if k != "every"}
  # The default label keys are the embedded data's; a task on its own data classifies that data's labels.
  defaults = {
    k: v
    for k, v in EVALUATORS.get(own.get("name", task)).defaults.items()
    if not (own.get("data") and k == "label_keys")
  }
  return {**defaults, **own}


def record_path(workdir: str, step: int, dataset: str, task: str) -> str:
  return storage.join(workdir, RECORDS, f"step_{step}", dataset, f"{task}.json")


class Records:
  """Writes one run's records, the one format of evaluation results: the harness, `main --mode=eval` and
  the evaluations during training all write them, and `vlm_jax.tables` reads them."""

  def __init__(self, workdir: str, config):
    self.workdir = workdir
    self.config = config
    self.common = {
      "run": storage.basename(workdir),
      "workdir": workdir,
      "config_hash": config_hash(config),
      "config": flatten(config.to_dict()),
      "preprocessing": {
        "image_size": config.model.image.image_size,
        "max_len": config.model.text.get("max_len"),
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "tokenizer": config.data.tokenizer,
        "lowercase": config.data.get("lowercase", False),
      },
    }

  def write(self, step, runner, key, task_config, metrics, seconds, *, name=None) -> str:
    """Writes the record of evaluator `key` of `runner` (task `name`, default the key) at `step`
    (process 0 writes; every process gets the path)."""
    dataset, name = dataset_name(self.config, task_config), name or key
    path = record_path(self.workdir, step, dataset, name)
    record = {
      **self.common,
      "dataset": dataset,
      "step": step,
      "task": name,
      "metrics": metrics,
      "task_config": task_config,
      "num_examples": runner.num_examples(key),
      "limit": task_config.get("limit", 0),  # 0: every example of the dataset
      "wall_s": seconds,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    per_image = getattr(runner.evaluators[key], "per_image", None)
    if per_image is not None:  # an evaluator that scores each image (captioning) keeps the scores
      record["per_image"] = per_image
    if jax.process_index() == 0:
      storage.write_json(path, record, sort_keys=True, default=str)
    return path


def evaluate(
  workdir: str,
  *,
  config=None,
  steps=None,
  all_checkpoints: bool = False,
  tasks=None,
  suite_name: str = "",
  data_dir: str = "",
  templates: str = "",
  limit: int = 0,
  force: bool = False,
  log=print,
) -> list:
  """Evaluates checkpoints of `workdir` (default: the latest); returns the paths of the records written.

  tasks: evaluators on the run's data and/or standard benchmark tasks (`suite.TASKS`, read from
  `data_dir`); suite_name adds a suite's tasks, of which those that do not fit the model or whose data is
  not in data_dir are left out (logged with where the data was looked for). limit / templates override
  the benchmark tasks' image count (0: all) and zero-shot template set. config: the run's config with
  overrides (`main --mode=eval --config ...`; default: the workdir's config.json)."""
  workdir = storage.resolve(workdir)
  run_config = config if config is not None else config_utils.load_workdir_config(workdir)
  config = copy.deepcopy(run_config)  # a copy the experiment builds no evaluators from
  ckpt_dir = storage.join(workdir, "checkpoints")
  available = checkpoint.all_steps(ckpt_dir)
  if not available:
    raise ConfigError(f"{workdir} has no checkpoints to evaluate")
  steps = available if all_checkpoints else (list(steps) if steps else [available[-1]])
  missing = sorted(set(steps) - set(available))
  if missing:
    raise ConfigError(f"{workdir} has no checkpoint at step(s) {missing}; it has {available}")
  with config.unlocked():
    config.evals = {}  # the harness chooses its tasks; the experiment should not build the run's evaluators
  exp = Experiment(config, log=lambda *a: None)
  requested = suite.resolve(tasks or (), suite_name) or None
  optional = set(suite.SUITES.get(suite_name, ())) - set(tasks or ())
  task_configs = fitting_tasks(
    run_config,
    exp.model,
    requested,
    optional=optional,
    benchmark=lambda t: suite.task_config(t, data_dir, templates, limit),
  )
  left_out = [t for t in requested or () if t not in task_configs]
  if left_out:
    log(f"left out (they do not fit model {config.model.name!r}): {', '.join(left_out)}")
  dataset = {t: dataset_name(config, c) for t, c in task_configs.items()}
  name = {t: suite.record_task(c) if t in suite.TASKS else t for t, c in task_configs.items()}
  records = Records(workdir, run_config)
  written, reported = [], set()
  runner = None
  for step in steps:
    todo = {
      t: c
      for t, c in task_configs.items()
      if force or not _has_record(record_path(workdir, step, dataset[t], name[t]), c)
    }
    if not todo:
      log(f"step {step}: every record exists ({', '.join(task_configs)})")
      continue
    runner = EvalRunner(exp, todo, skip_missing=optional)
    # One line per missing dataset (its tasks together), once, not once per checkpoint.
    by_reason = {}
    for task, reason in runner.skipped.items():
      by_reason.setdefault(reason, []).append(task)
    for reason, skipped in by_reason.items():
      if reason not in reported:
        log(f"skipped {', '.join(skipped)}: {reason}")
    reported.update(by_reason)
    if not runner.evaluators:
      raise ConfigError(
        "no task has its data: " + "; ".join(f"{t}: {r}" for t, r in runner.skipped.items())
      )
    params, _ = checkpoint.restore_params(ckpt_dir, step, exp.abstract_params_sharded())
    for task, metrics, seconds in runner.run_each(params, log=log):
      written.append(
        records.write(step, runner, task, todo[task], metrics, seconds, name=name[task])
      )
      log(
        f"step {step} {dataset[task]} {name[task]}: "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
      )
  return written


def _has_record(path: str, task_config: dict) -> bool:
  """Whether `path` holds a record made with the same limit. A record written before limited records had
  their own name (a `--limit` run under the full task's name) does not count; it is kept under its own
  name, and the full evaluation is made."""
  if not storage.exists(path):
    return False
  record = storage.read_json(path)
  limit = record.get("limit", record.get("task_config", {}).get("limit", 0))
  if limit == task_config.get("limit", 0):
    return True
  if limit and not task_config.get("limit"):
    limited = path[: -len(".json")] + f"_first{limit}.json"
    storage.write_json(
      limited, {**record, "task": f"{record['task']}_first{limit}", "limit": limit}
    )
  return False


def read_records(workdir: str) -> list:
  """Every record under `workdir` (empty if none)."""
  return [
    storage.read_json(path) for path in storage.find_files(storage.join(workdir, RECORDS), ".json")
  ]
