"""Loading and checking configs: `file.py:arg` variants and the checks that must fail before training."""

import importlib.util
import os

import ml_collections

from vlm_jax import storage
from vlm_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:arg]` by calling its `get_config(arg)`; the result is locked."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):  # local path: a config file, imported
    raise ConfigError(f"config file {path!r} not found")
  module_spec = importlib.util.spec_from_file_location("vlm_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  return config


def parse_mesh(spec) -> dict:
  """Parses 'data:4,fsdp:2' (missing axes default to 1, one axis may be -1 = the rest)."""
  sizes = {axis: 1 for axis in MESH_AXES}
  if not spec:
    sizes["data"] = -1
    return sizes
  for part in str(spec).split(","):
    name, sep, size = part.strip().partition(":")
    if not sep or name not in MESH_AXES:
      raise ConfigError(
        f"cannot read mesh {spec!r}; write e.g. 'data:4,fsdp:2' over axes {'/'.join(MESH_AXES)} "
        "(-1 = the remaining devices)"
      )
    try:
      sizes[name] = int(size)
    except ValueError:
      raise ConfigError(f"mesh axis {name!r} has size {size!r}; sizes are integers or -1") from None
  if sum(size == -1 for size in sizes.values()) > 1:
    raise ConfigError(f"mesh {spec!r} has more than one axis of size -1")
  if any(size == 0 or size < -1 for size in sizes.values()):
    raise ConfigError(f"mesh {spec!r} has an axis of size 0 or below -1")
  return sizes


def resolve_mesh(spec, num_devices: int) -> dict:
  """Fills in -1 and checks that the mesh uses exactly the available devices."""
  sizes = parse_mesh(spec)
  fixed = 1
  for size in sizes.values():
    if size != -1:
      fixed *= size
  if -1 in sizes.values():
    if num_devices % fixed:
      raise ConfigError(
        f"mesh {spec!r}: the fixed axes ({fixed} devices) do not divide the {num_devices} devices"
      )
    sizes = {k: (num_devices // fixed if v == -1 else v) for k, v in sizes.items()}
  elif fixed != num_devices:
    raise ConfigError(
      f"mesh {spec!r} needs {fixed} devices but {num_devices} are available; "
      "change the sizes or use -1 for one axis"
    )
  return sizes


def check_batch_size(
  batch_size: int, mesh_sizes: dict, process_count: int, what: str = "batch_size"
):
  data_parallel = mesh_sizes["data"] * mesh_sizes["fsdp"]
  if batch_size <= 0 or batch_size % data_parallel:
    raise ConfigError(
      f"{what}={batch_size} does not divide over the data axes (data x fsdp = {data_parallel}); "
      f"use a multiple of {data_parallel}"
    )
  if batch_size % process_count:
    raise ConfigError(f"{what}={batch_size} does not divide over the {process_count} processes")


WORKDIR_CONFIG = "config.json"


def save_workdir_config(config, workdir: str):
  """Writes the config a run (or a converted model) was made with, so that the workdir is self-describing."""
  storage.write_text(
    storage.join(workdir, WORKDIR_CONFIG), config.to_json_best_effort(indent=2, sort_keys=True)
  )


CONFIG_HISTORY = "config_history.jsonl"

# Settings a resumed run may change freely: how long and how it is logged, checkpointed and evaluated, how
# the step is laid out on the devices, and how fast data arrives. Anything else changes what is trained.
RESUME_FREE = (
  "train.",
  "evals.",
  "eval_batch_size",
  "init_from.",  # read by fresh runs only
  "mesh",
  "fsdp_min_mib",
  "debug.",
  "model.remat",
  "model.attention",
  "data.num_threads",
  "data.worker_processes",
  "data.workers",
  "data.device_prefetch",
)


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_changes(stored: dict, config) -> dict:
  """{dotted key: (stored value, new value)} for every setting that differs between a workdir's stored
  config (its JSON) and `config`; a key only one side has shows `<absent>` on the other."""
  import json  # pylint: disable=import-outside-toplevel

  before, after = _flat(stored), _flat(json.loads(config.to_json_best_effort()))
  return {
    key: (before.get(key, "<absent>"), after.get(key, "<absent>"))
    for key in sorted(set(before) | set(after))
    if before.get(key, "<absent>") != after.get(key, "<absent>")
  }


def changes_training(key: str) -> bool:
  return not any(
    key == free or (free.endswith(".") and key.startswith(free)) for free in RESUME_FREE
  )


def describe_changes(changes: dict) -> str:
  return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved in `workdir`. A relative data.tokenizer_path is resolved against the workdir."""
  import json  # pylint: disable=import-outside-toplevel

  path = storage.join(workdir, WORKDIR_CONFIG)
  if not storage.exists(path):
    raise ConfigError(
      f"{workdir} has no {WORKDIR_CONFIG}; is it a vlm_jax run or converted model? "
      "Pass --config explicitly otherwise"
    )
  config = ml_collections.ConfigDict(json.loads(storage.read_text(path)))
  tokenizer_path = config.data.get("tokenizer_path", "")
  if (
    tokenizer_path
    and not os.path.isabs(tokenizer_path)
    and not storage.is_remote(tokenizer_path)  # local path: a test
    and storage.exists(storage.join(workdir, tokenizer_path))
  ):
    config.data.tokenizer_path = storage.join(workdir, tokenizer_path)
  return config.lock()


def profile_steps(value) -> tuple[int, int] | None:
  """train.profile_steps: () -> None; (a, b) with 0 <= a < b -> (a, b); anything else is a ConfigError."""
  if not value:
    return None
  if len(value) != 2 or not all(isinstance(v, int) for v in value) or not 0 <= value[0] < value[1]:
    raise ConfigError(
      f"train.profile_steps={tuple(value)!r}: give two step numbers (a, b) with 0 <= a < b, "
      "e.g. --config.train.profile_steps='(10, 15)' traces steps 11 to 15"
    )
  return tuple(value)
