import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from tests.test_contrastive import _embeddings
from vlm_jax.core import sharding
from vlm_jax.objectives import sigmoid


def _numpy_reference(img, txt, scale, bias):
  logits = np.exp(scale) * img.astype(np.float64) @ txt.astype(np.float64).T + bias
  labels = 2 * np.eye(len(img)) - 1
  return np.sum(np.log1p(np.exp(-labels * logits))) / len(img)


def test_sigmoid_loss_matches_numpy():
  img, txt = _embeddings(n=12, d=8, seed=3)
  np.testing.assert_allclose(
    sigmoid.sigmoid_loss(img, txt, np.log(10.0), -10.0),
    _numpy_reference(img, txt, np.log(10.0), -10.0),
    rtol=1e-5,
  )
  # At SigLIP's initialisation (t=10, b=-10) the loss is dominated by the n positives: about log(1+e^10).
  assert 9.0 < float(sigmoid.sigmoid_loss(img, txt, np.log(10.0), -10.0)) < 21.0


CASES = [
  ("global", {}, "data:8"),
  ("ring", {}, "data:8"),
  ("ring", {"bidirectional": True}, "data:8"),
  ("ring", {"exchange": "image"}, "data:4,fsdp:2"),
  ("ring", {"bidirectional": True}, "data:2,fsdp:3"),
  ("ring", {}, "data:2,tensor:4"),
  ("global", {}, "data:4,fsdp:2"),
]


@pytest.mark.parametrize("impl,options,mesh_spec", CASES)
def test_sharded_sigmoid_loss_equals_single_device(impl, options, mesh_spec):
  img, txt = _embeddings(n=24, d=8, seed=1)
  scale, bias = jnp.float32(np.log(10.0)), jnp.float32(-3.0)
  devices = jax.devices()[:6] if "fsdp:3" in mesh_spec else None
  mesh = sharding.make_mesh(mesh_spec, devices)
  batch = NamedSharding(mesh, P(sharding.BATCH_AXES))
  fn = (
    sigmoid.sigmoid_loss_global
    if impl == "global"
    else functools.partial(sigmoid.sigmoid_loss_ring, mesh=mesh, **options)
  )
  ref_loss, ref_grads = jax.value_and_grad(sigmoid.sigmoid_loss, argnums=(0, 1, 2, 3))(
    img, txt, scale, bias
  )
  with jax.set_mesh(mesh):
    args = (jax.device_put(img, batch), jax.device_put(txt, batch), scale, bias)
    val, grads = jax.jit(jax.value_and_grad(lambda *a: fn(*a)[0], argnums=(0, 1, 2, 3)))(*args)
    _, metrics = jax.jit(fn)(*args)
  np.testing.assert_allclose(val, ref_loss, rtol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
  # Metrics: computed by the global implementation on one device (rows = the exchanged-against modality).
  first, second = (img, txt) if options.get("exchange", "text") == "text" else (txt, img)
  _, ref_metrics = sigmoid.sigmoid_loss_global(first, second, scale, bias)
  acc = next(k for k in metrics if k.endswith("_acc"))
  ref_metrics[acc] = ref_metrics.pop("i2t_acc")
  assert set(metrics) == set(ref_metrics)
  for name, ref in ref_metrics.items():
    np.testing.assert_allclose(metrics[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)


def _loss_and_grad_temp_bytes(impl, shards, per_shard=256, width=32):
  """Temporary bytes per device of the compiled loss + gradient at a fixed per-device batch."""
  mesh = sharding.make_mesh(f"data:{shards}", jax.devices()[:shards])
  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
  emb = jax.ShapeDtypeStruct((per_shard * shards, width), jnp.float32, sharding=rows)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  fn = (
    sigmoid.sigmoid_loss_global
    if impl == "global"
    else functools.partial(sigmoid.sigmoid_loss_ring, mesh=mesh)
  )
  step = jax.value_and_grad(lambda *a: fn(*a)[0], argnums=(0, 1, 2, 3))
  with jax.set_mesh(mesh):
    compiled = jax.jit(step).lower(emb, emb, scalar, scalar).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_ring_memory_stays_flat_as_shards_grow_while_global_grows():
  # The README's promise: the ring holds one [local, local] block (and a fixed number of [local, width]
  # buffers, its backward pass going round again) however many shards there are; the global loss holds
  # [local, global] logits per device.
  ring = {n: _loss_and_grad_temp_bytes("ring", n) for n in (4, 8)}
  glob = {n: _loss_and_grad_temp_bytes("global", n) for n in (4, 8)}
  assert ring[8] <= 1.02 * ring[4], ring
  assert glob[8] >= 1.8 * glob[4], glob
  assert ring[8] < glob[8] / 2, (ring, glob)
