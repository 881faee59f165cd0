import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from vlm_jax.core import sharding
from vlm_jax.objectives import contrastive


def _embeddings(n=16, d=8, seed=0):
  rng = np.random.default_rng(seed)
  img, txt = rng.normal(size=(2, n, d)).astype(np.float32)
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  return img, txt


def _numpy_reference(img, txt, logit_scale):
  logits = np.exp(logit_scale) * img.astype(np.float64) @ txt.astype(np.float64).T

  def ce(l):
    l = l - l.max(axis=1, keepdims=True)
    return -(np.diag(l) - np.log(np.exp(l).sum(axis=1))).mean()

  return 0.5 * (ce(logits) + ce(logits.T))


def test_clip_loss_matches_numpy():
  img, txt = _embeddings()
  np.testing.assert_allclose(
    contrastive.clip_loss(img, txt, 2.3)[0], _numpy_reference(img, txt, 2.3), rtol=1e-5
  )


def test_clip_loss_perfect_alignment_is_small():
  img, _ = _embeddings(n=8, d=16)
  eye = np.eye(8, 16, dtype=np.float32)
  assert contrastive.clip_loss(eye, eye, np.log(100.0))[0] < 1e-3
  assert contrastive.clip_loss(img, img[::-1], np.log(100.0))[0] > 1.0


@pytest.mark.parametrize("impl", ["global", "local"])
@pytest.mark.parametrize("mesh_spec", ["data:8", "data:4,fsdp:2", "data:2,tensor:4"])
def test_sharded_clip_loss_equals_single_device(impl, mesh_spec):
  img, txt = _embeddings(n=16, d=8, seed=1)
  scale = jnp.float32(np.log(20.0))
  mesh = sharding.make_mesh(mesh_spec)
  batch = NamedSharding(mesh, P(sharding.BATCH_AXES))
  fn = functools.partial(contrastive.clip_loss, impl=impl, mesh=mesh)

  def loss(i, t, s):
    return fn(i, t, s)[0]

  ref_loss, ref_grads = jax.value_and_grad(
    lambda *a: contrastive.clip_loss(*a)[0], argnums=(0, 1, 2)
  )(img, txt, scale)
  with jax.set_mesh(mesh):
    args = (jax.device_put(img, batch), jax.device_put(txt, batch), scale)
    val, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
    _, metrics = jax.jit(fn)(*args)
  np.testing.assert_allclose(val, ref_loss, rtol=1e-6, atol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)
  _, ref_metrics = contrastive.clip_loss(img, txt, scale)
  for name, ref in ref_metrics.items():
    np.testing.assert_allclose(metrics[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_losses_trace_at_a_64k_batch():
  """rows x (cols - 1) logits passes 2^31 at CoCa's published batch (65536); shapes only, no memory used."""
  from vlm_jax.objectives import sigmoid  # pylint: disable=import-outside-toplevel

  emb = jax.ShapeDtypeStruct((65536, 8), jnp.float32)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  loss, metrics = jax.eval_shape(contrastive.clip_loss, emb, emb, scalar)
  assert loss.shape == () and metrics["neg_logit"].shape == ()
  loss, metrics = jax.eval_shape(sigmoid.sigmoid_loss_global, emb, emb, scalar, scalar)
  assert loss.shape == () and metrics["neg_logit"].shape == ()
