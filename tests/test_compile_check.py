"""--mode=compile: the train step compiles on abstract inputs and reports the FLOPs the real step has."""

import jax
import pytest

from tests import helpers
from vlm_jax.assembly import flops
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.errors import ConfigError
from vlm_jax.train import compile_check


def test_compile_report_matches_the_compiled_training_step():
  config = helpers.micro_config(**{"mesh": "data:2,fsdp:2"})
  exp = Experiment(config, devices=jax.devices()[:4], log=lambda *a: None)
  report = compile_check.compile_report(exp, log=lambda *a: None)
  state = exp.init_state()
  batch = exp.global_batch(next(exp.train_iterator()))
  real = flops.compiled_flops(exp.compile_train_step(state, batch))
  assert report["flops_per_step_per_device"] == pytest.approx(real)
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and report["global_batch"] == 16
  assert report["params"] == sum(x.size for x in jax.tree.leaves(state.params))
  assert report["total_bytes_per_device"] > report["argument_bytes"] > 0


def test_compile_mode_from_the_command_line_needs_no_workdir():
  result = helpers.subprocess.run(
    [
      helpers.sys.executable,
      "-m",
      "vlm_jax.main",
      "--mode=compile",
      "--config",
      helpers.TINY,
      *helpers.cli_overrides(**{**helpers.MICRO, "mesh": "data:2"}),
    ],
    env=helpers.subprocess_env(2),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=helpers.ROOT,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "FLOPs per step per device" in result.stdout and "total bytes per device" in result.stdout


def test_a_step_that_does_not_fit_the_device_is_an_error(monkeypatch):
  exp = Experiment(helpers.micro_config(), devices=jax.devices()[:1], log=lambda *a: None)
  device = jax.devices()[0]
  monkeypatch.setattr(type(device), "memory_stats", lambda self: {"bytes_limit": 1024})
  with pytest.raises(ConfigError, match="per device but a device has"):
    compile_check.compile_report(exp, log=lambda *a: None)


@pytest.mark.parametrize(
  "recipe", [helpers.VILT_TINY, helpers.PREFIXLM_TINY], ids=["vilt", "prefixlm"]
)
def test_bench_times_recipes_whose_objectives_prepare_fields_on_the_host(recipe):
  """Whole-word MLM needs word boundaries and VQA question/answer pairs: the bench's batch has them."""
  from vlm_jax.tools import bench  # pylint: disable=import-outside-toplevel

  result = bench.benchmark(helpers.micro_config(recipe, batch_size=8), steps=1, warmup=0)
  assert (
    result["step_time_median_s"] > 0 and result["model_flops_per_step"] > 0 and result["mfu"] > 0
  )


def _objectives_temp(recipe, devices, **overrides):
  exp = Experiment(
    helpers.micro_config(recipe, **overrides), devices=jax.devices()[:devices], log=lambda *a: None
  )
  return compile_check.compile_report(exp, log=lambda *a: None)["objectives_temp_bytes"]


@pytest.mark.ci  # compiles three micro models' steps: CI's second tier
def test_the_report_separates_the_objectives_memory_where_sigmoid_ring_and_global_differ():
  # 128 examples per device on 8: the global loss holds [128, 1024] logits per device, the ring [128, 128].
  sizes = {"batch_size": 1024, "mesh": "data:8"}
  ring = _objectives_temp(helpers.SIGLIP_TINY, 8, **sizes, **{"objectives.sigmoid.impl": "ring"})
  whole = _objectives_temp(helpers.SIGLIP_TINY, 8, **sizes, **{"objectives.sigmoid.impl": "global"})
  assert 0 < 3 * ring < whole, (ring, whole)
  # Every family's objectives compile apart from the model, requests (masks, ITM pairing) included.
  assert _objectives_temp(helpers.FLAVA_TINY, 1) > 0
