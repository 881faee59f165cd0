"""Tiny configs and subprocess runs shared by the tests."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax import config_utils, storage
from vlm_jax.train import metrics as metrics_lib  # noqa: F401  (used by tests through helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "clip_b32.py") + ":tiny"
SIGLIP_TINY = os.path.join(ROOT, "experiments", "siglip_b16.py") + ":tiny"
COCA_TINY = os.path.join(ROOT, "experiments", "coca_b32.py") + ":tiny"
LIT_TINY = os.path.join(ROOT, "experiments", "lit_b16.py") + ":tiny"
VILT_TINY = os.path.join(ROOT, "experiments", "vilt_b32.py") + ":tiny"
FLAVA_TINY = os.path.join(ROOT, "experiments", "flava_b16.py") + ":tiny"
PREFIXLM_TINY = os.path.join(ROOT, "experiments", "prefixlm_b16.py") + ":tiny"
SIMVLM_TINY = os.path.join(ROOT, "experiments", "simvlm_base.py") + ":tiny"

# A CLIP small enough that 8 simulated devices fit on 2 cores. Kept as CLI-style overrides so that
# subprocess runs and in-process runs use exactly the same config.
MICRO = {
  "model.embed_dim": 32,
  "model.image.variant": "micro/8",
  "model.image.image_size": 32,
  "model.text.variant": "micro",
  "model.text.max_len": 16,
  "batch_size": 16,
  "eval_batch_size": 16,
  "fsdp_min_mib": 0,  # no micro tensor reaches the 4 MiB default: split them all, to test FSDP at all
  "data.num_threads": 2,
  "data.max_objects": 1,  # one dataset build for every test (the prefix-LM recipes use the 3-object one)
  "train.duration": "6 steps",
  "train.log_every": "2 steps",
  "train.checkpoint_every": "3 steps",
  "train.mfu": False,
  "optim.warmup": "2 steps",
  "evals.zero_shot.limit": 32,
  "evals.retrieval.limit": 32,
  "evals.zero_shot.every": "0 steps",
  "evals.retrieval.every": "0 steps",
}


# Per-recipe additions to MICRO (SigLIP's image embedding is its MAP head output: embed_dim = width).
MICRO_EXTRA = {
  SIGLIP_TINY: {"model.embed_dim": 64},
  # CoCa's decoder reads the pooled image tokens at the text tower's width (open_clip's configs).
  COCA_TINY: {
    "model.embed_dim": 64,
    "evals.captioning.limit": 32,
    "evals.captioning.every": "0 steps",
  },
  VILT_TINY: {
    "evals.itm_retrieval.limit": 16,
    "evals.itm_retrieval.every": "0 steps",
    "evals.mlm_accuracy.limit": 32,
    "evals.mlm_accuracy.every": "0 steps",
  },
  FLAVA_TINY: {
    "model.multimodal.variant": "micro",
    "evals.itm_retrieval.limit": 16,
    "evals.itm_retrieval.every": "0 steps",
    "evals.mlm_accuracy.limit": 32,
    "evals.mlm_accuracy.every": "0 steps",
  },
}


def micro_config(base=TINY, **overrides):
  """The recipe `base` shrunk by MICRO (entries a recipe does not have, e.g. a text variant for ViLT, are
  skipped), then `overrides` (which may add keys)."""
  config = config_utils.load_config(base)
  overrides = {**MICRO_EXTRA.get(base, {}), **overrides}
  with config.unlocked():
    for key, value in {**MICRO, **overrides}.items():
      node = config
      *parents, leaf = key.split(".")
      if key not in overrides and not all_present(config, parents + [leaf]):
        continue
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def all_present(config, keys):
  node = config
  for k in keys:
    if k not in node:
      return False
    node = node[k]
  return True


def cli_overrides(**overrides):
  return [f"--config.{k}={v}" for k, v in {**MICRO, **overrides}.items()]


def subprocess_env(num_devices: int):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_recipe(spec, workdir, *extra, timeout=1800):
  """Trains a shipped recipe as a user would (a subprocess on one device); returns its final_eval.json."""
  result = subprocess.run(
    [sys.executable, "-m", "vlm_jax.main", "--config", spec, "--workdir", str(workdir), *extra],
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=ROOT,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(str(workdir), "final_eval.json")) as f:
    return json.load(f)


def losses(workdir, name):
  return [
    r[f"train/{name}"] for r in metrics_lib.read_metrics(str(workdir)) if f"train/{name}" in r
  ]


def main_command(workdir, *extra, **overrides):
  return [
    sys.executable,
    "-m",
    "vlm_jax.main",
    "--config",
    TINY,
    "--workdir",
    str(workdir),
    *cli_overrides(**overrides),
    *extra,
  ]


def run_main(workdir, *extra, num_devices=2, timeout=300, **overrides):
  return subprocess.run(
    main_command(workdir, *extra, **overrides),
    env=subprocess_env(num_devices),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=ROOT,
  )


def checkpoint_steps(workdir):
  """Steps of the complete checkpoints in a local or bucket workdir."""
  return sorted(
    int(d) for d in storage.listdir(storage.join(str(workdir), "checkpoints")) if d.isdigit()
  )


def load_params(workdir, step=None):
  """The params of a run's checkpoint (default: the latest) as a flat {path: np.ndarray}."""
  step = checkpoint_steps(workdir)[-1] if step is None else step
  path = storage.join(str(workdir), "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  # Restore onto this process's first device whatever topology wrote the checkpoint.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    checkpointer.metadata(path).item_metadata.tree,
  )
  state = checkpointer.restore(path, target)
  flat = {}

  def visit(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        visit(f"{prefix}/{k}" if prefix else str(k), v)
    else:
      flat[prefix] = np.asarray(node)

  visit("", state["params"])
  return flat
