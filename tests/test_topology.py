"""Compiling for a TPU pod on a CPU-only host: libtpu describes the topology's chips, XLA's TPU compiler
compiles the train step for them and reports one chip's memory, checked against its HBM."""

import dataclasses

import pytest

from tests import helpers
from tests.test_user_paths import run
from vlm_jax.assembly import flops
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.core import sharding
from vlm_jax.errors import ConfigError
from vlm_jax.train import compile_check

topologies = pytest.importorskip("jax.experimental.topologies")


def devices(name):
  return topologies.get_topology_desc(topology_name=name, platform="tpu").devices


@pytest.mark.ci  # a TPU compile of the tiny recipe: CI's second tier
def test_the_tiny_recipe_compiles_for_a_v5e_2x2_from_the_command_line(cwd, monkeypatch):
  # Twice, as a user repeats a command, with a compilation cache of their own: the second used to read
  # the first's TPU executable back and warn that it could not without a TPU client.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cwd / "xla-cache"))
  for _ in range(2):
    result = run(
      cwd, "--mode=compile", "--topology=v5e:2x2", "--config", "experiments/clip_b32.py:tiny"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compilation cache" not in result.stderr, result.stderr[-3000:]
  assert not (cwd / "xla-cache").exists()  # a pod's executables are not this host's to cache
  assert "(4 devices of TPU topology v5e:2x2 (TPU v5 lite)), global batch 128" in result.stdout
  # model.dtype "auto" resolves for the target chips, not for this CPU host.
  assert "compute dtype bfloat16" in result.stdout
  assert (
    "device capacity: 16,384.0 MiB" in result.stdout
    and "FLOPs per step per device" in result.stdout
  )


def test_chip_memory_comes_from_the_chip_table_and_is_shared_by_its_cores():
  assert compile_check.device_capacity(devices("v5e:2x2")) == 16 * 2**30
  v4 = devices("v4:2x2x1")  # 4 chips, each seen as its 2 TensorCores
  assert len(v4) == 8 and compile_check.device_capacity(v4) == 16 * 2**30
  assert compile_check.device_capacity(devices("v5p:2x2x1")) == 95 * 2**30


# In this process JAX decided at its first compile to use the tests' persistent cache, and a TPU
# executable cached by an earlier run cannot be read back here (the command line turns the cache off).
@pytest.mark.ci
@pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache entry")
def test_a_step_that_does_not_fit_a_chip_is_an_error(monkeypatch):
  exp = Experiment(
    helpers.micro_config(), devices=devices("v5e:2x2"), log=lambda *a: None, weights=False
  )
  v5e = flops.chip("TPU v5 lite")
  monkeypatch.setattr(flops, "CHIPS", (dataclasses.replace(v5e, hbm_bytes=1024),))  # a 1 KiB chip
  with pytest.raises(ConfigError, match="per device but a device has 0.0 MiB"):
    compile_check.compile_report(exp, log=lambda *a: None, topology="v5e:2x2")


@pytest.mark.ci
def test_an_unknown_topology_is_one_line(cwd):
  result = run(
    cwd, "--mode=compile", "--topology=v9z:2x2", "--config", "experiments/clip_b32.py:tiny"
  )
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "cannot describe TPU topology 'v9z:2x2'" in result.stderr.strip().splitlines()[-1]


def test_a_mesh_axis_that_is_no_product_of_the_pods_axes_splits_one():
  """fsdp:16 on a v5p 8x8x8 (physical axes of 8): jax.make_mesh refuses it; the mesh splits a physical axis
  between data and fsdp instead, every chip once, as So400m's and CoCa's pod recipes need."""
  chips = devices("v5p:8x8x8")
  mesh = sharding.make_mesh("data:-1,fsdp:16", chips)
  assert dict(mesh.shape) == {"data": 32, "fsdp": 16, "tensor": 1}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in chips)
