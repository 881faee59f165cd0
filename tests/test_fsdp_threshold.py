"""FSDP only where it pays: on a B/16, parameters of 4 MiB and more are split over `fsdp`, smaller ones
(LayerNorms, biases, 768x768 attention projections) stay whole, and the optimizer state follows."""

import os

import jax

from tests import helpers
from vlm_jax import config_utils
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.core.optim import path_str

SIGLIP_B16 = os.path.join(helpers.ROOT, "experiments", "siglip_b16.py")


def _placements(min_mib):
  config = config_utils.load_config(SIGLIP_B16)
  with config.unlocked():
    config.mesh, config.batch_size, config.fsdp_min_mib = "fsdp:8", 8, min_mib
    # Unrolled, to place each layer's tensors; scanned, a stack is measured with all its layers, as
    # big_vision's `fsdp` measures its stacked arrays.
    config.model.scan_layers = False
  exp = Experiment(config, log=lambda *a: None, weights=False)
  sizes, split = {}, {}
  for (path, leaf), named in zip(
    jax.tree_util.tree_leaves_with_path(exp.abstract_params), jax.tree.leaves(exp.param_shardings)
  ):
    sizes[path_str(path)] = leaf.size * leaf.dtype.itemsize
    split[path_str(path)] = any(
      "fsdp" in (axes if isinstance(axes, tuple) else (axes,)) for axes in named.spec
    )
  return exp, sizes, split


def test_only_parameters_of_4_mib_and_more_are_split_over_fsdp():
  exp, sizes, split = _placements(4)
  _, _, split_all = _placements(
    0
  )  # no threshold: every tensor with an `embed` axis (the old layout)
  assert split == {p: split_all[p] and n >= 4 * 2**20 for p, n in sizes.items()}
  assert split["image_encoder/encoder/block_0/mlp/fc1/kernel"]  # 768x3072 f32 = 9 MiB
  assert split["text_encoder/encoder/block_11/mlp/fc2/kernel"]
  assert not split["image_encoder/encoder/block_0/attn/query/kernel"]  # 768x12x64 f32 = 2.25 MiB
  assert split_all["image_encoder/encoder/block_0/ln_1/scale"]
  assert not split["image_encoder/encoder/block_0/ln_1/scale"]
  whole = [p for p in sizes if split_all[p] and not split[p]]
  assert len(whole) > 3 * sum(split.values())  # most tensors (by count) are no longer split ...
  # ... but most bytes still are (the MLPs), so FSDP's memory saving stays.
  assert sum(sizes[p] for p in whole) < 0.5 * sum(sizes[p] for p in sizes if split_all[p])
  # The optimizer's moments are placed as their parameter.
  moments = [
    s
    for path, s in jax.tree_util.tree_leaves_with_path(exp.state_shardings.opt_state)
    if path_str(path).endswith("block_0/mlp/fc1/kernel")
  ]
  assert moments and all("fsdp" in str(s.spec) for s in moments)


def test_a_dimension_the_mesh_does_not_divide_stays_whole():
  """So400m's width 1152 over 256 fsdp devices does not divide: that dimension stays whole (the step
  compiles) while the others are still split; here 768 over fsdp:5."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from vlm_jax.core import sharding  # pylint: disable=import-outside-toplevel

  box = lambda shape: nn.LogicallyPartitioned(
    jax.ShapeDtypeStruct(shape, jnp.float32), ("embed", "mlp")
  )
  boxed = {"wide": box((768, 3000)), "even": box((770, 3000))}
  mesh = sharding.make_mesh("data:1,fsdp:5", jax.devices()[:5])
  placed = sharding.logical_shardings(boxed, mesh)
  assert tuple(placed["wide"].spec)[0] is None  # 768 % 5 != 0
  assert tuple(placed["even"].spec)[0] == "fsdp"  # 770 % 5 == 0
