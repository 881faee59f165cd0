"""The device mesh and the logical-axis rules that place parameters and activations on it.

Parameters and activations are annotated with logical axis names in the models; `RULES` maps each to mesh
axes. FSDP is `fsdp > 1` (parameters sharded over `embed`, batch over data x fsdp); tensor parallelism is
`tensor > 1` (mlp/heads/vocab split). Neither needs model code changes.
"""

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from vlm_jax import config_utils
from vlm_jax.core.optim import path_str

BATCH_AXES = ("data", "fsdp")

# Applied in order; a mesh axis already used by an earlier dimension of the same array is skipped, so
# activations [batch, length, embed] put batch on data x fsdp and leave embed whole.
RULES = (
  ("batch", BATCH_AXES),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("vocab", "tensor"),
  ("kv", None),
  ("length", None),
  ("layers", None),
  ("patch", None),
  ("proj", None),
)


def make_mesh(spec, devices=None) -> jax.sharding.Mesh:
  """Mesh over `devices` (default: all) from a 'data:4,fsdp:2' spec; Auto axes so logical rules apply."""
  devices = jax.devices() if devices is None else devices
  sizes = config_utils.resolve_mesh(spec, len(devices))
  shape = tuple(sizes[a] for a in config_utils.MESH_AXES)
  axis_types = (AxisType.Auto,) * len(shape)
  try:
    return jax.make_mesh(shape, config_utils.MESH_AXES, axis_types=axis_types, devices=devices)
  except NotImplementedError:
    # A logical axis that is no product of the pod's physical axes (fsdp:16 on a v5p 8x8x8): split a
    # physical axis between two logical ones rather than refuse the mesh.
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, config_utils.MESH_AXES, axis_types=axis_types)


def logical_shardings(boxed_tree, mesh, rules=RULES, fsdp_min_bytes: int = 0):
  """NamedShardings for a tree of flax LogicallyPartitioned boxes (e.g. from `jax.eval_shape(init)`).

  Parameters smaller than `fsdp_min_bytes` are not split over `fsdp` (big_vision's threshold): gathering
  a LayerNorm scale or a bias costs a collective's latency and saves almost no memory. A dimension the
  mesh axes do not divide (So400m's 1152 over 256 devices) stays whole rather than failing.
  """
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)
  values = nn.unbox(boxed_tree)

  def divisible(dim, axes):
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    return dim % int(np.prod([mesh.shape[a] for a in names])) == 0

  def place(value, named):
    spec = named.spec
    if value.size * value.dtype.itemsize < fsdp_min_bytes:
      spec = tuple(_without(axes, "fsdp") for axes in spec)
    spec = tuple(axes if divisible(dim, axes) else None for dim, axes in zip(value.shape, spec))
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(place, values, shardings)


def _without(axes, name):
  """A PartitionSpec entry with mesh axis `name` removed."""
  if axes == name:
    return None
  if isinstance(axes, tuple):
    kept = tuple(a for a in axes if a != name)
    return kept if len(kept) > 1 else (kept[0] if kept else None)
  return axes


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def data_parallel_size(mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def global_batch_from_local(local_batch, mesh):
  """Assembles the global batch from each process's rows (its slice of every global batch)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def state_shardings(abstract_state, param_shardings, mesh):
  """Shardings for a whole train state: optimizer moments follow their parameter, the rest is replicated.

  Optax states embed the parameter tree (adam's mu/nu, per-group inner states), so a state leaf whose
  path ends with a parameter's path and has its shape gets that parameter's sharding.
  """
  by_path = {}
  jax.tree_util.tree_map_with_path(
    lambda p, s: by_path.__setitem__(path_str(p), s), param_shardings
  )
  params_by_path = {}
  jax.tree_util.tree_map_with_path(
    lambda p, x: params_by_path.__setitem__(path_str(p), x.shape), abstract_state.params
  )

  def pick(path, leaf):
    keys = path_str(path).split("/")
    for start in range(len(keys)):
      suffix = "/".join(keys[start:])
      if suffix in by_path and params_by_path[suffix] == leaf.shape:
        return by_path[suffix]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract_state)
