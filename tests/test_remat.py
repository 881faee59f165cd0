"""`model.remat` and `model.scan_layers` reach every encoder of every family: rematerialisation keeps the
gradients and cuts XLA's temporary memory; scanning stacks every encoder's blocks.

The memory check runs with scanned layers: over unrolled layers XLA:CPU gains nothing from remat (see
docs/scaling.md for the measurements)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from vlm_jax import config_utils
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.core import sharding

FAMILIES = [
  helpers.TINY,
  helpers.COCA_TINY,
  helpers.VILT_TINY,
  helpers.FLAVA_TINY,
  helpers.SIMVLM_TINY,
  helpers.PREFIXLM_TINY,
]


def _experiment(recipe, *, tiny=False, **overrides):
  """The micro recipe, or (tiny=True) the tiny recipe as shipped at batch 8: deep enough for remat to pay."""
  if tiny:
    config = config_utils.load_config(recipe)
    with config.unlocked():
      config.update_from_flattened_dict({"batch_size": 8, "data.max_objects": 1, **overrides})
  else:
    config = helpers.micro_config(recipe, batch_size=8, **overrides)
  return Experiment(config, devices=jax.devices()[:1], log=lambda *_: None)


def _batch(exp, n=8):
  examples = [exp.train_preprocess(exp.data.train[i], np.random.default_rng(i)) for i in range(n)]
  return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}


def _compiled_grad(exp, params, batch):
  def loss(p):
    return exp.loss(p, batch, jax.random.PRNGKey(0))[0]

  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(sharding.RULES):
    return jax.jit(jax.grad(loss)).lower(params).compile()


def _primitives(jaxpr, depth=0):
  """(depth, primitive name, the jaxprs it holds) of every equation, recursively."""
  for eqn in jaxpr.eqns:
    inner = [
      getattr(v, "jaxpr", v)
      for v in eqn.params.values()
      if hasattr(v, "jaxpr") or hasattr(v, "eqns")
    ]
    yield depth, eqn.primitive.name, inner
    for j in inner:
      yield from _primitives(j, depth + 1)


@pytest.mark.parametrize(
  "recipe",
  [pytest.param(r, marks=() if r in (helpers.FLAVA_TINY,) else pytest.mark.slow) for r in FAMILIES],
  ids=lambda r: r.split("/")[-1],
)
def test_remat_keeps_gradients_and_cuts_temporary_memory(recipe):
  plain, remat = (
    _experiment(recipe, tiny=True, **{"model.scan_layers": True, "model.remat": r})
    for r in ("none", "full")
  )
  params = plain.init_state().params
  batch = _batch(plain)
  compiled = [_compiled_grad(e, params, batch) for e in (plain, remat)]
  grads = [c(params) for c in compiled]
  for path, a, b in zip(
    jax.tree_util.tree_leaves_with_path(grads[0]), *map(jax.tree.leaves, grads)
  ):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path[0]))
  temp = [c.memory_analysis().temp_size_in_bytes for c in compiled]
  assert temp[1] < 0.7 * temp[0], f"temporary bytes without / with remat: {temp}"


@pytest.mark.parametrize("recipe", FAMILIES, ids=lambda r: r.split("/")[-1])
def test_scan_and_remat_reach_every_encoder(recipe):
  """Scanned: no encoder keeps per-layer parameters; rematerialised: every scanned stack's body is a remat."""
  exp = _experiment(recipe, **{"model.scan_layers": True, "model.remat": "full"})
  paths = [
    jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(exp.abstract_params)
  ]
  unstacked = [p for p in paths if re.search(r"block_\d", p)]
  assert not unstacked, unstacked[:5]
  batch = _batch(exp)
  jaxpr = jax.make_jaxpr(lambda p: exp.loss(p, batch, jax.random.PRNGKey(0))[0])(
    exp.abstract_params
  ).jaxpr
  scans = [inner for _, name, inner in _primitives(jaxpr) if name == "scan"]
  assert scans
  for inner in scans:
    assert any(
      name.startswith("remat") or name == "checkpoint"
      for j in inner
      for _, name, _ in _primitives(j)
    )
