"""Input on device: uint8 pixels normalised inside the step, batches prefetched to the devices with an exact
checkpointed position, and decoding in grain worker processes."""

import jax
import numpy as np
import pytest

from tests import helpers
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.data import pipeline, sources, transforms


def test_training_pixels_cross_as_uint8_and_the_loss_equals_host_normalisation():
  exp = Experiment(helpers.micro_config(), log=lambda *a: None)
  examples = [exp.train_preprocess(exp.data.train[i], None) for i in range(16)]
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  assert batch["image"].dtype == np.uint8
  # The reference: the evaluation preprocessing, normalised on the host in NumPy.
  host = np.stack([exp.eval_preprocess(exp.data.train[i], None)["image"] for i in range(16)])
  assert host.dtype == np.float32
  on_device = transforms.normalise_on_device(jax.numpy.asarray(batch["image"]), *exp.pixel_stats)
  np.testing.assert_allclose(np.asarray(on_device), host, rtol=0, atol=1e-6)

  params, key = exp.init_state().params, jax.random.PRNGKey(1)
  loss = lambda b: exp.loss(params, b, key)[0]
  np.testing.assert_allclose(float(loss(batch)), float(loss({**batch, "image": host})), rtol=1e-6)
  assert float(loss({**batch, "image": batch["image"].astype(np.float32)})) != float(loss(batch))


def _numbers(n=40):
  return [{"x": i} for i in range(n)]


def _preprocess(example, rng):
  if example["x"] == 7:
    raise sources.SampleError("bad_image", str(example["x"]), "test")
  return {"x": np.int32(example["x"]), "r": np.float32(rng.uniform())}


def _iterator(**kw):
  return pipeline.train_iterator(
    _numbers(), _preprocess, global_batch=4, seed=5, num_threads=2, **kw
  )


def test_device_prefetch_keeps_batches_in_flight_and_checkpoints_the_handed_out_position():
  plain = _iterator()
  expected = [next(plain) for _ in range(12)]
  transfers = []

  def to_device(batch):
    transfers.append(int(batch["x"][0]))
    return jax.device_put(batch)

  prefetched = pipeline.DevicePrefetch(_iterator(), to_device, size=2)
  for i in range(5):
    batch = next(prefetched)
    np.testing.assert_array_equal(np.asarray(batch["x"]), expected[i]["x"])
    assert len(transfers) == i + 2  # batch i+1 is already on its way while step i runs
  state = prefetched.get_state()
  prefetched.close()

  resumed = pipeline.DevicePrefetch(_iterator(), jax.device_put, size=2)
  resumed.set_state(state)
  resumed.start_prefetch()
  for i in range(5, 12):  # exactly the batches after the 5 handed out, not after the 7 transferred
    np.testing.assert_array_equal(np.asarray(next(resumed)["x"]), expected[i]["x"])


@pytest.mark.ci  # starts grain worker processes: CI's second tier
def test_worker_processes_decode_the_same_batches_count_skips_and_resume():
  threads = _iterator()
  expected = [
    next(threads) for _ in range(14)
  ]  # 40 rows, one bad: crosses an epoch and skips row 7 twice
  sources.SKIPS.reset()
  workers = _iterator(worker_processes=2)
  for i in range(6):
    got = next(workers)
    for key in ("x", "r"):
      np.testing.assert_array_equal(got[key], expected[i][key])
  assert sources.SKIPS.snapshot() == {"bad_image": 1}  # counted here, not lost in a worker
  state = workers.get_state()
  resumed = _iterator(worker_processes=2)
  resumed.set_state(state)
  for i in range(6, 14):
    np.testing.assert_array_equal(next(resumed)["x"], expected[i]["x"])
