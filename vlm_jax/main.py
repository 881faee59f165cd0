r"""Train or evaluate a vlm_jax experiment.

  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny \
      [--config.optim.lr=1e-3] [--config.mesh=data:4,fsdp:2] [--mode=train|eval]

Multi-host: pass --coordinator_address/--num_processes/--process_id, or run under SLURM or on a Cloud
TPU VM, where jax.distributed reads them from the environment. Running the same command again on the
same workdir resumes from its latest checkpoint.
"""
import os
import sys

from absl import app, flags, logging

from vlm_jax.cli import FLAGS, fail, parse_flags

flags.DEFINE_string("workdir", None, "Directory (or bucket URL) for checkpoints, metrics and logs.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "compile"],
                  "train (and evaluate); eval: evaluate a workdir's checkpoint (with the workdir's own config.json "
                  "when --config is not given); compile: compile the train step for the mesh and report its memory "
                  "and FLOPs, without training.")
flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: the latest).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for multi-host runs.")
flags.DEFINE_integer("process_id", None, "This process's index, for multi-host runs.")


def _initialize_distributed():
  import jax  # pylint: disable=import-outside-toplevel
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()  # reads SLURM's / the TPU VM's environment


def main(argv):
  del argv
  if FLAGS.mode == "compile" and FLAGS.config is None:
    fail("--mode=compile needs --config")
  if (not FLAGS.workdir and FLAGS.mode != "compile") or (FLAGS.config is None and FLAGS.mode == "train"):
    fail("--config and --workdir are required, e.g. --config experiments/clip_b32.py:tiny --workdir runs/x")
  _initialize_distributed()
  import jax  # pylint: disable=import-outside-toplevel
  from vlm_jax import config_utils  # pylint: disable=import-outside-toplevel
  from vlm_jax.registry import ConfigError  # pylint: disable=import-outside-toplevel
  from vlm_jax.train import experiment, trainer  # pylint: disable=import-outside-toplevel
  log = print if jax.process_index() == 0 else (lambda *a, **k: None)
  try:
    config = FLAGS.config if FLAGS.config is not None else config_utils.load_workdir_config(FLAGS.workdir)
    experiment.check_config(config)
    if FLAGS.mode == "compile":
      from vlm_jax.train import compile_check  # pylint: disable=import-outside-toplevel
      stage_configs = [config]
      if config.get("stages"):
        from vlm_jax.train import stages  # pylint: disable=import-outside-toplevel
        stage_configs = [c for _, c in stages.stage_configs(config, FLAGS.workdir or "compile-check")]
      for i, c in enumerate(stage_configs):
        if len(stage_configs) > 1:
          log(f"Stage {i}: {config.stages[i]['name']}")
        if not c.model.get("locked"):   # compiling needs no weights (a locked tower's source is still checked)
          with c.unlocked():
            c.init_from.workdir = ""
        compile_check.compile_report(experiment.Experiment(c, log=log), log=log)
      return
    if FLAGS.mode == "train" and config.get("stages"):
      from vlm_jax.train import stages  # pylint: disable=import-outside-toplevel
      config_utils.save_workdir_config(config, FLAGS.workdir)
      results = stages.run(config, FLAGS.workdir, train=trainer.train, log=lambda *a: log(*a, flush=True))
    elif FLAGS.mode == "train":
      results = trainer.train(config, FLAGS.workdir, log=lambda *a: log(*a, flush=True))
    else:
      from vlm_jax.eval import evaluate  # pylint: disable=import-outside-toplevel
      results = evaluate.evaluate_workdir(config, FLAGS.workdir, step=FLAGS.step, log=log)
  except ConfigError as e:
    fail(str(e))
  except trainer.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for name, value in sorted(results.items()):
    log(f"{name}: {value:.4f}")


def run():
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
