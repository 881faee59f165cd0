"""A few train steps on an 8-device mesh equal the same steps on one device."""

import jax
import numpy as np
import pytest

from tests import helpers
from vlm_jax.assembly.experiment import Experiment


def _run_steps(config, devices, steps=3):
  exp = Experiment(config, devices=devices, log=lambda *a: None)
  state = exp.init_state()
  data = exp.train_iterator()
  train_step, losses = None, []
  for _ in range(steps):
    batch = exp.global_batch(next(data))
    train_step = train_step or exp.compile_train_step(state, batch)
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  return exp, state, losses


@pytest.mark.parametrize(
  "mesh,options,base",
  [
    ("data:4,fsdp:2", {"objectives.clip.impl": "global"}, helpers.TINY),
    ("data:4,tensor:2", {"objectives.clip.impl": "local"}, helpers.TINY),
    ("data:2,fsdp:2,tensor:2", {"objectives.clip.impl": "local"}, helpers.TINY),
    ("data:4,fsdp:2", {"objectives.sigmoid.impl": "ring"}, helpers.SIGLIP_TINY),
    pytest.param(  # ~50 s: CI's second tier (CLIP covers this mesh in the fast one)
      "data:2,fsdp:2,tensor:2",
      {"objectives.coca.impl": "local"},
      helpers.COCA_TINY,
      marks=pytest.mark.ci,
    ),
    # ViLT: masking, hard-negative mining and the image swap happen on the global batch.
    ("data:4,fsdp:2", {"objectives.itm.negatives": "mixed"}, helpers.VILT_TINY),
    # FLAVA: all five objectives, patch and token masks drawn on the global batch. Opt-in (-m slow, ~1 min):
    # the ViLT case covers the fusion family's masking and mining in the default run.
    pytest.param(
      "data:4,fsdp:2", {"objectives.clip.impl": "local"}, helpers.FLAVA_TINY, marks=pytest.mark.slow
    ),
  ],
)
def test_sharded_steps_equal_single_device(mesh, options, base):
  # Adam turns a gradient of 1e-9 into a step of +-lr, and some gradients are exactly zero in exact
  # arithmetic (attention key biases: softmax is shift-invariant), so reduction-order noise would flip
  # their steps. A large epsilon makes updates linear in the gradient for the comparison.
  stable_adam = {"optim.eps": 1e-3}
  config = helpers.micro_config(base, mesh=mesh, **options, **stable_adam)
  single = helpers.micro_config(base, mesh="data:1", **stable_adam)
  _, ref_state, ref_losses = _run_steps(single, jax.devices()[:1])
  exp, state, losses = _run_steps(config, jax.devices())
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  ref = jax.device_get(ref_state.params)
  got = jax.device_get(state.params)
  for (path, r), g in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
  # The parameters really are split as the rules say, not replicated.
  encoder = (
    state.params["text_encoder"]["encoder"]
    if "text_encoder" in state.params
    else state.params["encoder"]
  )
  fc1 = encoder["block_0"]["mlp"]["fc1"]["kernel"]
  fsdp, tensor = exp.mesh.shape["fsdp"], exp.mesh.shape["tensor"]
  assert fc1.sharding.shard_shape(fc1.shape) == (fc1.shape[0] // fsdp, fc1.shape[1] // tensor)
  mu = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
  assert any(hasattr(m, "mu") for m in mu)
