"""Orbax checkpoints of the train state and the grain iterator position, async, atomic, keep-N.

Orbax writes each step into a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoints intact and the partial one is ignored on restore.
"""

import json
import logging
import re
import sys

from flax import traverse_util
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax import storage
from vlm_jax.core.optim import path_str
from vlm_jax.errors import ConfigError


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed; the ones written before it are intact."""


class CheckpointUnreadable(ConfigError):
  """A checkpoint's files are damaged or missing (its metadata, or its arrays on restore)."""


# How tensorstore and orbax report damaged bytes: OCDBT/zstd checks, byte ranges past a truncated file,
# a deleted file. A storage that cannot be reached (UNAVAILABLE, PERMISSION_DENIED, ...) is not damage,
# and must never move a good checkpoint aside.
_DAMAGE = (
  "FAILED_PRECONDITION",
  "OUT_OF_RANGE",
  "DATA_LOSS",
  "NOT_FOUND",
  "corruption",
  "Truncated",
  "does not exist",
  "No such file",
)


def is_damage(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from (orbax wraps tensorstore's), reports damage."""
  while error is not None:
    if isinstance(error, (CheckpointUnreadable, FileNotFoundError, json.JSONDecodeError)) or any(
      marker in str(error) for marker in _DAMAGE
    ):
      return True
    error = error.__cause__ or error.__context__
  return False


def one_line(error: Exception, limit: int = 300) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def move_aside(directory: str, step: int) -> str:
  """checkpoints/<step> -> checkpoints/<step>.corrupt (.corrupt-2, ... if taken): kept for a person to
  inspect, invisible to orbax (not a step name). Returns the new path."""
  target, n = storage.join(directory, f"{step}.corrupt"), 1
  while storage.exists(target):
    n += 1
    target = storage.join(directory, f"{step}.corrupt-{n}")
  storage.move_tree(storage.join(directory, str(step)), target)
  return target


def newest_intact(directory, steps, read, *, log, main=True, agree=lambda ok: ok):
  """`read(step)` of the newest of `steps` whose files are intact: a step whose read fails with damage is
  moved aside (process 0, one line in the log) and the next older one is read. `agree(ok)` makes every
  process take the same decision. Returns (read's result, step), or (None, None) when none is intact.
  Any other error (a storage that cannot be reached, a model that does not fit) is raised as it is."""
  for step in sorted(steps, reverse=True):
    try:
      result, error = read(step), None
    except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many kinds)
      if not is_damage(e):
        raise
      result, error = None, e
    if agree(error is None):
      return result, step
    if main:
      aside = move_aside(directory, step)
      log(
        f"Checkpoint {step} in {directory} cannot be read ({one_line(error or Exception('on another process'))}); "
        f"moved it to {aside} and trying the one before"
      )
    agree(True)  # the others wait for the move
  return None, None


class _OrbaxErrorsWithoutTracebacks(logging.Filter):
  """Orbax logs a failed background save with its traceback from each thread it passes through; the run
  reports the failure itself, in one line (CheckpointSaveError), so orbax's lines keep only their message."""

  def filter(self, record):
    if record.exc_info and "orbax" in record.pathname:
      record.exc_info, record.exc_text = None, None
    return True


logging.getLogger("absl").addFilter(_OrbaxErrorsWithoutTracebacks())


def _without_abandoned_reads(previous):
  """When a restore fails (a damaged checkpoint, which newest_intact reports in one line), orbax leaves
  its other array reads unawaited, and Python prints each one's error, with its traceback and its cause's,
  when it collects them ('Exception ignored in: <coroutine object _read_array_index_and_device_put ...>'):
  dozens of tracebacks of the one failure already reported. Those are dropped; the rest go to `previous`."""

  def hook(unraisable):
    if "_read_array_index_and_device_put" not in repr(unraisable.object):
      previous(unraisable)

  return hook


sys.unraisablehook = _without_abandoned_reads(sys.unraisablehook)


class Checkpointer:
  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = storage.resolve(directory)
    self.manager = ocp.CheckpointManager(
      self.directory,
      item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
      ),
    )

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None):
    """Starts writing checkpoint `step` (async); raises CheckpointSaveError if this or an earlier save failed."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._checked(
      lambda: self.manager.save(step, args=ocp.args.Composite(**items), force=True), step
    )
    self.check()

  def check(self):
    """Raises CheckpointSaveError if a background save has failed (cheap; call it at log points)."""
    self._checked(self.manager.check_for_errors, None)

  def _checked(self, fn, step):
    try:
      return fn()
    except CheckpointSaveError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many kinds)
      kept = [s for s in self.all_steps() if step is None or s != step]
      reason = " ".join(str(e).split())[:300]
      raise CheckpointSaveError(
        f"saving a checkpoint{'' if step is None else f' at step {step}'} in {self.directory} failed "
        f"({type(e).__name__}: {reason}); the run stops. Checkpoints written before are intact "
        f"(steps {kept or 'none'}): fix the storage and run the same command to resume"
      ) from None

  def reload(self):
    """Re-reads the steps on disk (after a checkpoint was moved aside)."""
    self.manager.reload()

  def restore(self, step: int, target_state, data_iterator=None):
    """Restores into the shardings of `target_state` (arrays or ShapeDtypeStructs with .sharding)."""
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target_state
    )
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def wait(self):
    self._checked(self.manager.wait_until_finished, None)

  def close(self):
    self.manager.close()


def flat_paths(tree) -> dict:
  """{'a/b/c': leaf} of a nested tree."""
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _first_few(items: list, sep: str, few: int = 4) -> str:
  """A long list of paths as its first few and a count: a whole model's paths made a 5,000-character line."""
  shown = sep.join(items[:few])
  return shown + (f"{sep}... ({len(items) - few} more)" if len(items) > few else "")


def check_params_match(saved: dict, expected: dict, where: str, include=None):
  """Raises ConfigError listing missing, unexpected and wrongly shaped parameter paths.

  saved/expected: {path: object with .shape}. `include` (a predicate on paths) limits the check to the
  parameters being loaded; unexpected paths are then not an error.
  """
  wanted = {p: v for p, v in expected.items() if include is None or include(p)}
  missing = sorted(set(wanted) - set(saved))
  unexpected = sorted(set(saved) - set(expected)) if include is None else []
  shapes = sorted(
    f"{p}: checkpoint {tuple(saved[p].shape)} vs model {tuple(v.shape)}"
    for p, v in wanted.items()
    if p in saved and tuple(saved[p].shape) != tuple(v.shape)
  )
  problems = [
    f"{len(missing)} missing: {_first_few(missing, ', ')}" if missing else "",
    f"{len(unexpected)} unexpected: {_first_few(unexpected, ', ')}" if unexpected else "",
    f"{len(shapes)} with other shapes: {_first_few(shapes, '; ')}" if shapes else "",
  ]
  problems = [p for p in problems if p]
  if problems:
    raise ConfigError(
      f"the checkpoint {where} does not fit the model: "
      + " | ".join(problems)
      + ". Use the config the checkpoint was made with (its workdir's config.json), or load a subset "
      "with init_from.include"
    )


# How models.layers.Encoder names its layers: unrolled, `block_0` .. `block_{depth-1}`; scanned, one `blocks`
# whose parameters carry a leading layer axis. The two layouts hold the same numbers.
_UNROLLED = re.compile(r"block_(\d+)")


def unstack_layers(flat: dict, take=lambda x, i: x[i]) -> dict:
  """{path: leaf} of scanned layers as unrolled ones (`.../blocks/w` [depth, ...] -> `.../block_i/w`);
  other paths unchanged. take(leaf, i): the i-th layer of a stacked leaf (metadata needs its own)."""
  out = {}
  for path, x in flat.items():
    parts = path.split("/")
    if "blocks" not in parts:
      out[path] = x
      continue
    k = parts.index("blocks")
    for i in range(x.shape[0]):
      out["/".join(parts[:k] + [f"block_{i}"] + parts[k + 1 :])] = take(x, i)
  return out


def stack_layers(flat: dict, stacked: set, join=np.stack) -> dict:
  """The inverse of `unstack_layers` for the stacked paths `stacked` names (others stay unrolled);
  join(leaves) stacks one parameter's layers in order."""
  out, layers = {}, {}
  for path, x in flat.items():
    parts = path.split("/")
    k = next((j for j, s in enumerate(parts) if _UNROLLED.fullmatch(s)), None)
    name = None if k is None else "/".join(parts[:k] + ["blocks"] + parts[k + 1 :])
    if name in stacked:
      layers.setdefault(name, {})[int(parts[k][len("block_") :])] = x
    else:
      out[path] = x
  for path, by_layer in layers.items():
    out[path] = join([by_layer[i] for i in range(len(by_layer))])
  return out


def _layer_metadata(x, i):
  del i
  return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype)


def all_steps(directory: str) -> list:
  """The sorted steps of the complete checkpoints in `directory` ([] if there are none)."""
  directory = storage.resolve(directory)
  if not storage.isdir(directory):
    return []
  manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def state_path(directory: str, step: int) -> str:
  return storage.join(storage.resolve(directory), str(step), "state")


def saved_param_shapes(directory: str, step: int) -> dict:
  """{parameter path: metadata with .shape} of checkpoint `step`, read from its metadata (no array data)."""
  path = state_path(directory, step)
  metadata = ocp.PyTreeCheckpointer().metadata(path).item_metadata
  saved = metadata.tree if metadata is not None else None
  if not saved or "params" not in saved:
    raise CheckpointUnreadable(
      f"{path} holds no readable 'params' metadata (missing or damaged, or not a vlm_jax checkpoint)"
    )
  return flat_paths(saved["params"])


def restore_params(directory: str, step: int | None, abstract_params, *, include=None):
  """Reads the parameters of a checkpoint in `directory` (a run's `checkpoints` folder), nothing else.

  abstract_params: ShapeDtypeStructs with shardings. include: a predicate on parameter paths; only those
  are read, and the result holds only them (see `merge_params`). Mismatches fail with the offending paths.
  Returns (params, step).
  """
  directory = storage.resolve(directory)
  steps = all_steps(directory)
  if not steps:
    raise ConfigError(f"no checkpoint in {directory}; train first or pass the right --workdir")
  step = max(steps) if step is None or step < 0 else step
  if step not in steps:
    raise ConfigError(f"no checkpoint at step {step} in {directory}; available: {sorted(steps)}")
  path = state_path(directory, step)
  expected = flat_paths(abstract_params)
  saved = saved_param_shapes(directory, step)
  if set(saved) != set(expected) and any("blocks" in p.split("/") for p in {*saved, *expected}):
    # One side's layers are scanned, the other's unrolled (a scanned run starting from a converted
    # checkpoint, or the reverse): compare them unrolled, read them as saved, lay them out as expected.
    unrolled = unstack_layers(expected, _layer_metadata)
    check_params_match(
      unstack_layers(saved, _layer_metadata), unrolled, f"{directory} (step {step})", include
    )
    return _restore_relaid(path, saved, expected, include), step
  check_params_match(saved, expected, f"{directory} (step {step})", include)
  checkpointer = ocp.PyTreeCheckpointer()
  target = traverse_util.unflatten_dict(
    {p: x for p, x in expected.items() if include is None or include(p)}, sep="/"
  )
  restore_args = jax.tree.map(
    lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), target
  )
  restored = checkpointer.restore(
    path,
    args=ocp.args.PyTreeRestore(
      item={"params": target}, restore_args={"params": restore_args}, partial_restore=True
    ),
  )
  return restored["params"], step


def _restore_relaid(path: str, saved: dict, expected: dict, include) -> dict:
  """Parameters saved in the other layer layout, read on the host and laid out (and sharded) as expected."""
  wanted = {p for p in unstack_layers(expected, _layer_metadata) if include is None or include(p)}
  read = {
    p: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
    for p, x in saved.items()
    if wanted & set(unstack_layers({p: x}, _layer_metadata))
  }
  target = traverse_util.unflatten_dict(read, sep="/")
  on_host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  host = ocp.PyTreeCheckpointer().restore(
    path,
    args=ocp.args.PyTreeRestore(
      item={"params": target}, restore_args={"params": on_host}, partial_restore=True
    ),
  )["params"]
  unrolled = unstack_layers(traverse_util.flatten_dict(host, sep="/"))
  laid = stack_layers({p: x for p, x in unrolled.items() if p in wanted}, set(expected))
  out = {}
  for p, x in laid.items():
    x = x.astype(expected[p].dtype)
    out[p] = jax.make_array_from_callback(x.shape, expected[p].sharding, lambda i, x=x: x[i])
  return traverse_util.unflatten_dict(out, sep="/")


def merge_params(params, loaded):
  """`params` with every leaf that `loaded` (a subset tree of the same paths) has replaced by it."""
  flat = traverse_util.flatten_dict(loaded, sep="/")
  return jax.tree_util.tree_map_with_path(lambda p, x: flat.get(path_str(p), x), params)
