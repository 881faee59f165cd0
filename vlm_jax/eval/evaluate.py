"""`main --mode=eval`: evaluate a workdir's checkpoint and write its record."""

import jax

from vlm_jax import storage
from vlm_jax.core import checkpoint
from vlm_jax.core.experiment import Experiment
from vlm_jax.eval.runner import EvalRunner


def evaluate_workdir(config, workdir: str, *, step: int | None = None, log=print) -> dict:
  """Runs the config's evaluators on checkpoint `step` (default: latest); writes workdir/eval/step_N.json."""
  exp = Experiment(config, log=log)
  workdir = storage.resolve(workdir)
  params, step = checkpoint.restore_params(
    storage.join(workdir, "checkpoints"), step, exp.abstract_params_sharded()
  )
  log(f"Evaluating step {step} of {workdir} on {exp.data.description}")
  results = EvalRunner(exp).run(params)
  if jax.process_index() == 0:
    path = storage.join(workdir, "eval", f"step_{step}.json")
    storage.write_json(path, {"step": step, **results})
    log(f"Wrote {path}")
  return results
