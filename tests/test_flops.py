"""Honest MFU: model FLOPs counted from the traced step equal the closed-form transformer count, sit just
under XLA's count of a no-remat step, ignore remat, and are divided by the right chip's peak."""

import jax
import pytest

from tests import helpers
from vlm_jax.assembly import flops
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.train import metrics


def _experiment(recipe, **overrides):
  config = helpers.micro_config(recipe, mesh="data:1", batch_size=8, **overrides)
  return Experiment(config, devices=jax.devices()[:1], log=lambda *a: None, weights=False)


def _xla_flops(exp):
  state = exp.init_state(apply_init_from=False)
  batch = exp.global_batch(next(exp.train_iterator()))
  return flops.compiled_flops(exp.compile_train_step(state, batch))


def transformer_forward(tokens, width, depth, mlp):
  """2 * matmul parameters * tokens + QK^T and AV (2 * 2 * tokens^2 * width), per sample."""
  return depth * (2 * tokens * (4 * width**2 + 2 * width * mlp) + 4 * tokens**2 * width)


def test_model_flops_equal_the_closed_form_count_of_micro_clip():
  exp = _experiment(helpers.TINY)
  b, width, mlp, depth, embed = 8, 64, 256, 2, 32  # micro towers, batch 8
  patches, patch_pixels = (32 // 8) ** 2, 8 * 8 * 3
  patch_embed = 2 * patches * patch_pixels * width
  forward = (
    b
    * (
      patch_embed
      + transformer_forward(patches + 1, width, depth, mlp)  # + the class token
      + transformer_forward(16, width, depth, mlp)  # text, max_len 16
      + 2 * (2 * width * embed)  # the two projections of the pooled tokens
    )
    + 2 * b * b * embed
  )  # the similarity matrix
  # Backward = 2x forward, except the patch embedding's: no gradient flows into the images.
  assert flops.model_flops(exp) == 3 * forward - b * patch_embed


@pytest.mark.parametrize(
  "recipe", [helpers.TINY, helpers.LIT_TINY, helpers.FLAVA_TINY], ids=["clip", "lit", "flava"]
)
def test_model_flops_sit_within_15_percent_under_xla_count_of_a_no_remat_step(recipe):
  """XLA also counts elementwise work (softmax, norms, GELU, the optimizer): 0-15% more on micro models."""
  exp = _experiment(recipe)
  model, xla = flops.model_flops(exp), _xla_flops(exp)
  assert model <= xla <= 1.15 * model, (model, xla)


def test_remat_raises_hardware_flops_but_not_model_flops():
  plain, remat = _experiment(helpers.TINY), _experiment(helpers.TINY, **{"model.remat": "full"})
  assert flops.model_flops(remat) == flops.model_flops(plain)
  assert _xla_flops(remat) > _xla_flops(plain) + 0.2 * flops.model_flops(plain)  # the recompute


def test_peak_comes_from_the_chip_table_for_the_compute_dtype():
  assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == (989e12, "table: H100")
  assert flops.peak_flops("NVIDIA H100 PCIe", "bfloat16")[0] == 756e12
  assert flops.peak_flops("NVIDIA H200", "float32")[0] == 495e12  # TF32
  assert flops.peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == 312e12
  assert flops.peak_flops("TPU v5 lite", "bfloat16")[0] == 197e12
  assert flops.peak_flops("TPU v5", "bfloat16")[0] == 459e12
  assert flops.peak_flops("TPU v6 lite", "float32")[0] == 918e12
  peak, source = flops.peak_flops("cpu", "float32")
  assert source.startswith("measured") and 1e9 < peak < 1e13


def test_progress_reports_mfu_and_hfu_separately():
  cost = flops.StepFlops(model=8e12, hardware=1.5e12, peak=1e12, peak_source="test", devices=8)
  progress = metrics.Progress(100, 64, cost)
  assert cost.utilisation(2.0) == {"perf/mfu": 0.5, "perf/hfu": 0.75}
  line = progress.line(10, {"train/loss": 1.0, **cost.utilisation(2.0)})
  assert line.endswith("MFU 50.0% | HFU 75.0%")


def test_a_pod_batch_is_counted_from_shapes_without_host_memory():
  """A pod's global batch never exists on the host: CoCa's 65536 images at 224 px (37 GiB) once ran the
  compile report out of memory. A batch of 10^9 micro images (3 TB as float32) is counted like batch 8."""
  exp = _experiment(helpers.TINY)
  batch = exp.abstract_batch(10**9)
  assert batch["image"].shape[0] == 10**9 and batch["image"].dtype == "uint8"
  assert batch["text"].shape == (10**9, exp.max_len)
