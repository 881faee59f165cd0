r"""Evaluate a run's checkpoints and write one JSON record per (run, step, dataset, task).

python -m vlm_jax.eval --workdir runs/clip_tiny                       # latest checkpoint, every fitting task
python -m vlm_jax.eval --workdir runs/clip_tiny --all-checkpoints --tasks zero_shot,linear_probe
python -m vlm_jax.eval --workdir runs/clip_tiny --step 200 --force     # recompute existing records
"""

from absl import app, flags, logging

from vlm_jax.cli import fail, parse_flags

flags.DEFINE_string("workdir", None, "The run to evaluate (its config.json and checkpoints/).")
flags.DEFINE_list("step", [], "Checkpoint step(s) (default: the latest).")
flags.DEFINE_bool("all_checkpoints", False, "Evaluate every checkpoint of the run.")
flags.DEFINE_list("tasks", [], "Tasks to run (default: every task that fits the model).")
flags.DEFINE_bool("force", False, "Recompute records that exist.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.workdir:
    fail("--workdir is required")
  if FLAGS.step and FLAGS.all_checkpoints:
    fail("give --step or --all-checkpoints, not both")
  from vlm_jax import builtins  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (registers the built-ins)
  from vlm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from vlm_jax.eval import harness  # pylint: disable=import-outside-toplevel

  try:
    written = harness.evaluate(
      FLAGS.workdir,
      steps=[int(s) for s in FLAGS.step],
      all_checkpoints=FLAGS.all_checkpoints,
      tasks=FLAGS.tasks or None,
      force=FLAGS.force,
    )
  except ConfigError as e:
    fail(str(e))
  print(f"{len(written)} record(s) written under {FLAGS.workdir}/{harness.RECORDS}")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)
