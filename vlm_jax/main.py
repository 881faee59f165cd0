r"""Train or evaluate a vlm_jax experiment.

  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny \
      [--config.optim.lr=1e-3] [--config.mesh=data:4,fsdp:2] [--mode=train|eval]

Multi-host: pass --coordinator_address/--num_processes/--process_id, or run under SLURM or on a Cloud
TPU VM, where jax.distributed reads them from the environment. Running the same command again on the
same workdir resumes from its latest checkpoint.
"""

import functools
import os
import sys

from absl import app, flags, logging

from vlm_jax.cli import FLAGS, fail, parse_flags

flags.DEFINE_string("workdir", None, "Directory (or bucket URL) for checkpoints, metrics and logs.")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "compile"],
  "train (and evaluate); eval: evaluate a workdir's checkpoint (with the workdir's own config.json "
  "when --config is not given); compile: compile the train step for the mesh and report its memory "
  "and FLOPs, without training.",
)
flags.DEFINE_integer("step", None, "--mode=eval: the checkpoint step (default: the latest).")
flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume with settings that change the training (optimizer, batch, data, objectives, model); the "
  "changes are recorded with the step in the workdir's config_history.jsonl.",
)
flags.DEFINE_string(
  "topology",
  None,
  "--mode=compile: compile for this TPU topology (e.g. v5e:16x16, v4:2x2x2, v5p:4x4x4, v6e:8x8) "
  "instead of this machine's devices; needs libtpu (pip install -e '.[tpu]'), no TPU.",
)
flags.DEFINE_bool(
  "find_max_batch",
  False,
  "--mode=compile: bisect the largest batch per data shard whose train step fits a device's memory "
  "(compiling each candidate); the configured batch is where the search starts.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for multi-host runs.")
flags.DEFINE_integer("process_id", None, "This process's index, for multi-host runs.")


def _initialize_distributed():
  import jax  # pylint: disable=import-outside-toplevel

  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif (
    int(os.environ.get("SLURM_NTASKS", "1")) > 1
    or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
  ):
    jax.distributed.initialize()  # reads SLURM's / the TPU VM's environment


def _topology_devices(name: str):
  """The devices of a TPU topology, described by libtpu on any host (they can compile, not run)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

  try:
    return topologies.get_topology_desc(topology_name=name, platform="tpu").devices
  except Exception as e:  # pylint: disable=broad-except  (libtpu missing, or a name it does not know)
    reason = " ".join(str(e).split())[:200]
    fail(
      f"cannot describe TPU topology {name!r} ({type(e).__name__}: {reason}); install libtpu with "
      "pip install -e '.[tpu]' and give a name such as v5e:2x2, v5e:16x16, v4:2x2x2, v5p:4x4x4"
    )


def _compile(config, log):
  from vlm_jax import builtins  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (registers the built-ins)
  from vlm_jax.assembly import experiment  # pylint: disable=import-outside-toplevel
  from vlm_jax.train import compile_check  # pylint: disable=import-outside-toplevel

  devices = _topology_devices(FLAGS.topology) if FLAGS.topology else None
  experiment.check_config(
    config, num_devices=None if devices is None else len(devices), weights=False
  )
  stage_configs = [config]
  if config.get("stages"):
    from vlm_jax.train import stages  # pylint: disable=import-outside-toplevel

    stage_configs = [c for _, c in stages.stage_configs(config, FLAGS.workdir or "compile-check")]
  for i, c in enumerate(stage_configs):
    if len(stage_configs) > 1:
      log(f"Stage {i}: {config.stages[i]['name']}")
    with c.unlocked():  # compiling needs no weights
      c.init_from.workdir = ""
    exp = experiment.Experiment(c, devices=devices, log=log, weights=False)
    try:
      report = compile_check.compile_report(exp, log=log, topology=FLAGS.topology)
    except compile_check.DoesNotFit as e:
      if not FLAGS.find_max_batch:
        raise
      log(f"  {e}")  # the search goes down from here
      report = {"fits": False}
    if FLAGS.find_max_batch:
      shards = exp.mesh.shape["data"] * exp.mesh.shape["fsdp"]

      def at_batch(global_batch, c=c):
        c = c.copy_and_resolve_references()
        with c.unlocked():
          c.batch_size = c.eval_batch_size = global_batch
        return experiment.Experiment(c, devices=devices, log=lambda *a: None, weights=False)

      log(f"Searching the largest batch per data shard ({shards} shards) that fits:")
      best, report = compile_check.find_max_batch(
        at_batch, shards, exp.batch_size // shards, log=log, start_report=report
      )
      log(
        f"Largest batch that fits: {best} per shard, global {best * shards} "
        f"({report['total_bytes_per_device'] / 2**20:,.1f} MiB per device)"
      )


def main(argv):
  del argv
  if FLAGS.mode == "compile" and FLAGS.config is None:
    fail("--mode=compile needs --config")
  if FLAGS.find_max_batch and FLAGS.mode != "compile":
    fail("--find_max_batch is for --mode=compile")
  if FLAGS.topology and FLAGS.mode != "compile":
    fail("--topology is for --mode=compile (training runs on the devices it finds)")
  if (not FLAGS.workdir and FLAGS.mode != "compile") or (
    FLAGS.config is None and FLAGS.mode == "train"
  ):
    fail(
      "--config and --workdir are required, e.g. --config experiments/clip_b32.py:tiny --workdir runs/x"
    )
  if (
    FLAGS.topology
  ):  # this host's accelerators (if any) are not used; describing the topology is enough
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # libtpu takes /tmp/libtpu_lockfile as if it drove a TPU; compiling for a described topology does not,
    # so compiles may run side by side (a sweep's configs, parallel tests).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  else:
    _initialize_distributed()
  import jax  # pylint: disable=import-outside-toplevel

  if FLAGS.topology:
    # A pod's TPU executables cannot be read back on a host with no TPU client: cached, the next compile
    # of the same step warned "Error reading persistent compilation cache entry" and compiled anew.
    jax.config.update("jax_enable_compilation_cache", False)

  from vlm_jax import (  # pylint: disable=import-outside-toplevel
    builtins,  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (registers the built-ins)
    config_utils,
    storage,
  )
  from vlm_jax.assembly import experiment  # pylint: disable=import-outside-toplevel
  from vlm_jax.core import checkpoint  # pylint: disable=import-outside-toplevel
  from vlm_jax.errors import ConfigError, StorageError  # pylint: disable=import-outside-toplevel
  from vlm_jax.train import trainer  # pylint: disable=import-outside-toplevel

  log = print if jax.process_index() == 0 else (lambda *a, **k: None)
  try:
    workdir = storage.resolve(FLAGS.workdir) if FLAGS.workdir else None
    config = FLAGS.config if FLAGS.config is not None else config_utils.load_workdir_config(workdir)
    if FLAGS.mode == "compile":
      _compile(config, log)
      return
    experiment.check_config(config)
    if FLAGS.mode == "train" and config.get("stages"):
      from vlm_jax.train import stages  # pylint: disable=import-outside-toplevel

      train = functools.partial(trainer.train, allow_config_change=FLAGS.allow_config_change)
      results = stages.run(config, workdir, train=train, log=lambda *a: log(*a, flush=True))
    elif FLAGS.mode == "train":
      results = trainer.train(
        config,
        workdir,
        log=lambda *a: log(*a, flush=True),
        allow_config_change=FLAGS.allow_config_change,
      )
    else:
      from vlm_jax.eval import evaluate  # pylint: disable=import-outside-toplevel

      results = evaluate.evaluate_workdir(config, workdir, step=FLAGS.step, log=log)
  except ConfigError as e:
    fail(str(e))
  except trainer.Stopped as e:  # SIGTERM or Ctrl-C: saved; exit 0 (launchers resume such runs)
    log(str(e))
    return
  except (trainer.TrainingDiverged, checkpoint.CheckpointSaveError, StorageError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:  # a second Ctrl-C (the first saves and stops, trainer._Preemption)
    print(
      "Stopped by Ctrl-C without saving; the checkpoints written before are kept, and the same "
      "command resumes from the newest.",
      file=sys.stderr,
    )
    sys.exit(130)
  for name, value in sorted(results.items()):
    log(f"{name}: {value:.4f}")


def run():
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
