"""`main --mode=eval`: evaluate a workdir's checkpoint with a config's evals, written as the harness's
records (`eval_records/step_N/<dataset>/<task>.json`, the one format tables read)."""

from vlm_jax import storage
from vlm_jax.core import checkpoint
from vlm_jax.errors import ConfigError
from vlm_jax.eval import harness


def evaluate_workdir(config, workdir: str, *, step: int | None = None, log=print) -> dict:
  """Runs the config's evals on checkpoint `step` (default: the latest), replacing their records (the
  training's, or an earlier evaluation's); returns {'eval/<metric>': value}."""
  workdir = storage.resolve(workdir)
  available = checkpoint.all_steps(storage.join(workdir, "checkpoints"))
  if not available:
    raise ConfigError(f"{workdir} has no checkpoints to evaluate")
  step = available[-1] if step is None else step
  tasks = list(config.evals)
  if not tasks:
    raise ConfigError(
      "the config has no evals to run; add one, e.g. --config.evals.zero_shot.every=never"
    )
  log(f"Evaluating step {step} of {workdir}")
  harness.evaluate(workdir, config=config, steps=[step], tasks=tasks, force=True, log=log)
  results = {}
  for task in tasks:
    task_config = harness.task_settings(config, task)
    path = harness.record_path(workdir, step, harness.dataset_name(config, task_config), task)
    results.update({f"eval/{k}": v for k, v in storage.read_json(path)["metrics"].items()})
  log(f"Records are in {storage.join(workdir, harness.RECORDS, f'step_{step}')}")
  return results
