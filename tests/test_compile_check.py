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


def _compile_cli(cwd, *flags):
  """`python -m vlm_jax.main --mode=compile` on the micro CLIP over 2 CPU devices, from `cwd`."""
  return helpers.subprocess.run(
    [
      helpers.sys.executable,
      "-m",
      "vlm_jax.main",
      "--mode=compile",
      *flags,
      "--config",
      helpers.TINY,
      *helpers.cli_overrides(**{**helpers.MICRO, "mesh": "data:2"}),
    ],
    env=helpers.subprocess_env(2),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=cwd,
  )


def test_compile_mode_from_the_command_line_needs_no_workdir():
  result = _compile_cli(helpers.ROOT)
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


def test_the_chip_table_tells_chips_apart():
  assert flops.chip("TPU v5 lite").peak_16bit == 197e12  # v5e, not v5p
  assert flops.chip("TPU v5").peak_16bit == 459e12 and flops.chip("TPU v5p").hbm_bytes == 95 * 2**30
  assert flops.chip("NVIDIA H200").hbm_bandwidth == 4.8e12  # not the H20
  assert flops.chip("NVIDIA H100 PCIe").peak_16bit == 756e12  # not the SXM part
  assert flops.chip("cpu") is None


def test_the_roofline_is_the_slower_of_compute_and_memory():
  class Device:  # a chip listed as one device (no TensorCores apart)
    device_kind = "TPU v5 lite"

  report = {
    "device_kind": "TPU v5 lite",
    "dtype": "bfloat16",
    "devices": 4,
    "flops_per_step_per_device": 197e12 * 0.010,  # 10 ms of compute at v5e's peak
    "bytes_accessed_per_device": 819e9 * 0.025,  # 25 ms of HBM traffic at its bandwidth
    "model_flops_per_step": 4 * 197e12 * 0.008,
    "executed_matmul_flops_per_step": 4 * 197e12 * 0.010,  # remat recomputes a quarter more
  }
  out = compile_check.roofline(report, [Device()] * 4)
  assert out["roofline_bound"] == "memory" and not out["bytes_estimated"]
  assert out["roofline_step_s"] == pytest.approx(0.025)
  assert out["roofline_compute_s"] == pytest.approx(0.010)
  assert out["mfu_bound"] == pytest.approx(0.008 / 0.025)
  assert out["recompute_ratio"] == pytest.approx(10 / 8)
  # Scanned layers: XLA counted the loop bodies once, half of the matmuls here; the missing trips' FLOPs
  # come from the jaxpr's count and the bytes are scaled by the same factor.
  scanned = compile_check.roofline(
    {**report, "flops_per_step_per_device": 197e12 * 0.006, "scan_undercount": 2.0},
    [Device()] * 4,
  )
  assert scanned["flops_per_device"] == pytest.approx(197e12 * (0.006 + 0.005))
  assert scanned["bytes_per_device"] == pytest.approx(819e9 * 0.050) and scanned["bytes_estimated"]
  assert scanned["roofline_step_s"] == pytest.approx(0.050)
  # float32 on a chip whose float32 peak is its bfloat16 one; a CPU has no roofline, only the counts.
  assert (
    compile_check.roofline({**report, "dtype": "float32"}, [Device()] * 4)["roofline_step_s"] > 0
  )
  cpu = compile_check.roofline({**report, "device_kind": "cpu"}, [Device()] * 4)
  assert "roofline_step_s" not in cpu and cpu["recompute_ratio"] == pytest.approx(10 / 8)


def test_full_remat_recomputes_the_forward_pass():
  """XLA's FLOPs over the model's: the backward pass of a rematerialised block runs its forward again,
  so full remat adds about a third (4/3 when the blocks are all the work)."""
  ratios, xla = {}, {}
  for remat, scan in (("none", False), ("full", False), ("full", True)):
    overrides = {"model.remat": remat, "model.scan_layers": scan}
    exp = Experiment(
      helpers.micro_config(**overrides), devices=[jax.devices()[0]], log=lambda *a: None
    )
    report = compile_check.measure(exp)
    ratios[remat, scan] = report["recompute_ratio"]
    xla[remat, scan] = report["flops_per_step_per_device"]
  assert ratios["none", False] == 1.0, ratios
  assert 1.15 < ratios["full", False] < 4 / 3, ratios
  assert ratios["full", True] == pytest.approx(ratios["full", False]), ratios  # through the scans
  # XLA's own count agrees where it sees every layer (unscanned): the same increase, within 3%.
  assert xla["full", False] / xla["none", False] == pytest.approx(ratios["full", False], rel=0.03)


@pytest.mark.ci  # about eight compiles
def test_find_max_batch_bisects_to_the_largest_batch_that_fits(monkeypatch):
  def at_batch(global_batch):
    config = helpers.micro_config(**{"batch_size": global_batch, "eval_batch_size": global_batch})
    return Experiment(config, devices=jax.devices()[:2], log=lambda *a: None)

  base = compile_check.measure(at_batch(16), memory_only=True)["total_bytes_per_device"]
  limit = {"bytes_limit": int(base * 1.3)}
  device = jax.devices()[0]
  monkeypatch.setattr(type(device), "memory_stats", lambda self: limit)
  logs = []
  best, report = compile_check.find_max_batch(at_batch, 2, start=4, log=logs.append)
  assert report["total_bytes_per_device"] <= limit["bytes_limit"] and best >= 8, logs
  # The next batch does not fit, measured apart from the search.
  assert (
    compile_check.measure(at_batch(2 * (best + 1)))["total_bytes_per_device"] > limit["bytes_limit"]
  )
  limit["bytes_limit"] = 1024
  with pytest.raises(ConfigError, match="does not fit a device even at batch 1"):
    compile_check.find_max_batch(at_batch, 2, start=4, log=logs.append)


def test_find_max_batch_from_the_command_line_needs_a_known_capacity(tmp_path):
  """This CPU reports no memory capacity: the search says what it needs in one line (a --topology or an
  accelerator gives it) after the step's report."""
  result = _compile_cli(tmp_path, "--find_max_batch")
  assert result.returncode == 2, result.stderr[-2000:]
  assert "recomputation ratio" in result.stdout and "(2 shards)" in result.stdout
  assert "--find_max_batch needs the devices' memory capacity" in result.stderr.splitlines()[-1]


def test_a_step_the_compiler_refuses_for_memory_is_one_line_and_a_bisection_probe(monkeypatch):
  """XLA's TPU compiler refuses a program larger than HBM (RESOURCE_EXHAUSTED) before any estimate is
  made: a one-line error naming the fix, and for --find_max_batch a batch that does not fit."""
  exp = Experiment(helpers.micro_config(), devices=jax.devices()[:1], log=lambda *a: None)

  class Refused:
    def lower(self, *args):
      return self

    def compile(self):
      raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (93.24G) exceeds available HBM (15.75G).\nmore lines"
      )

  monkeypatch.setattr(exp, "jit_train_step", Refused)
  with pytest.raises(compile_check.DoesNotFit) as error:
    compile_check.compile_report(exp, log=lambda *a: None)
  assert "\n" not in str(error.value) and "(93.24G) exceeds" in str(error.value)
  assert "fsdp" in str(error.value)
  with pytest.raises(ConfigError, match="even at batch 1"):
    compile_check.find_max_batch(lambda batch: exp, 1, start=2, log=lambda *a: None)


def test_find_max_batch_follows_the_memory_line_in_a_few_probes(monkeypatch):
  """Against memory models that are affine with a kink (steeper past 150 a shard) or concave, refused by
  the compiler far above the capacity, the search returns the largest batch that fits, from above or
  below, in fewer probes than doubling and bisecting (9 to 16 here); a start measured already is not
  measured again."""
  capacity = 16 * 2**30
  probes = []
  for total in (
    lambda b: 2e9 + 7.3e7 * b + (3e7 * (b - 150) if b > 150 else 0),
    lambda b: 1e9 + 2e9 * b**0.5,
  ):
    largest = max(b for b in range(1, 1 << 12) if total(b) <= capacity)

    def measure(batch, memory_only=False, total=total):
      probes.append(batch)
      if total(batch) > 2 * capacity:
        raise compile_check.DoesNotFit("the compiler refused it")
      return {"total_bytes_per_device": int(total(batch)), "device_capacity_bytes": capacity}

    monkeypatch.setattr(compile_check, "measure", measure)
    for start in (1, 16, 128, 1000):
      probes.clear()
      best, report = compile_check.find_max_batch(
        lambda batch: batch // 4, 4, start, log=lambda *a: None
      )
      assert (best, report["total_bytes_per_device"]) == (largest, int(total(largest))), start
      assert len(probes) <= 8, (start, probes)
  probes.clear()
  start_report = measure(128)
  best, _ = compile_check.find_max_batch(
    lambda batch: batch // 4, 4, 128, log=lambda *a: None, start_report=start_report
  )
  assert best == largest and 128 not in probes[1:]
