r"""Evaluate a run's checkpoints and write one JSON record per (run, step, dataset, task).

python -m vlm_jax.evaluate --workdir runs/clip_tiny                       # latest checkpoint, every fitting task
python -m vlm_jax.evaluate --workdir runs/clip_tiny --all-checkpoints --tasks zero_shot,linear_probe
python -m vlm_jax.evaluate --workdir runs/clip_tiny --step 200 --force     # recompute existing records
python -m vlm_jax.evaluate --workdir RUN --suite standard --data_dir DIR    # the standard benchmarks in DIR
python -m vlm_jax.evaluate --workdir RUN --tasks imagenet_zeroshot,coco_retrieval --data_dir DIR
"""

from absl import app, flags, logging

from vlm_jax.cli import fail, parse_flags

flags.DEFINE_string("workdir", None, "The run to evaluate (its config.json and checkpoints/).")
flags.DEFINE_list("step", [], "Checkpoint step(s) (default: the latest).")
flags.DEFINE_bool("all_checkpoints", False, "Evaluate every checkpoint of the run.")
flags.DEFINE_list(
  "tasks",
  [],
  "Tasks to run: evaluators on the run's data and/or standard benchmarks such as imagenet_zeroshot "
  "(default: every evaluator that fits the model, on the run's data).",
)
flags.DEFINE_string(
  "suite", "", "A benchmark suite (standard): its tasks whose data is in --data_dir."
)
flags.DEFINE_string(
  "data_dir", "", "Where the standard datasets are: a TFDS data dir and/or their original files."
)
flags.DEFINE_string(
  "templates",
  "",
  "ImageNet zero-shot's template set: openai_imagenet (80, default), openai_imagenet_7, single",
)
flags.DEFINE_integer("limit", 0, "Benchmark tasks: evaluate the first N images only (0: all).")
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
      suite_name=FLAGS.suite,
      data_dir=FLAGS.data_dir,
      templates=FLAGS.templates,
      limit=FLAGS.limit,
      force=FLAGS.force,
    )
  except ConfigError as e:
    fail(str(e))
  print(f"{len(written)} record(s) written under {FLAGS.workdir}/{harness.RECORDS}")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)
