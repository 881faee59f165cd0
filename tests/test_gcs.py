"""Bucket workdirs end to end, against a real GCS-protocol server (gcp-storage-emulator on 127.0.0.1):
train with --workdir gs://..., stop with SIGTERM, resume bit-identically from the bucket; evaluate, tabulate
and load from the bucket; stream training shards from it. Nothing is written to local disk for the run."""

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from tests import gcs as gcs_lib
from tests import helpers
from vlm_jax import storage

pytestmark = pytest.mark.ci  # CI's second tier: a few minutes of runs against the emulator
STEPS = {
  "train.duration": "16 steps",
  "train.checkpoint_every": "4 steps",
  "train.log_every": "1 steps",
}


def _env(gcs):
  return {**helpers.subprocess_env(2), **gcs}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted local run of STEPS: what every interrupted bucket run must end at."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  result = helpers.run_main(workdir, **STEPS)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_a_bucket_run_stops_resumes_bit_identically_and_is_evaluated_tabulated_and_loaded_from_the_bucket(
  gcs, tmp_path, reference
):
  root = f"gs://{gcs_lib.BUCKET}/{uuid.uuid4().hex[:8]}"
  workdir = f"{root}/clip_micro"
  log = open(tmp_path / "first.log", "w+")  # not a pipe: nobody reads it while the run goes on
  process = subprocess.Popen(
    helpers.main_command(workdir, **STEPS),
    env=_env(gcs),
    stdout=log,
    stderr=subprocess.STDOUT,
    text=True,
    cwd=tmp_path,
  )
  metrics = f"{workdir}/metrics.jsonl"
  deadline = time.time() + 240
  while not (storage.exists(metrics) and storage.read_text(metrics).count("\n") >= 6):
    assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    assert time.time() < deadline, "the bucket run wrote no metrics"
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  process.wait(timeout=120)
  out = (tmp_path / "first.log").read_text()
  assert process.returncode == 0, out[-3000:]
  stopped = helpers.checkpoint_steps(workdir)[-1]
  assert "Stopping at step" in out and 0 < stopped < 16
  assert not storage.exists(f"{workdir}/lock.json")  # released on the way out
  resumed = subprocess.run(
    helpers.main_command(workdir, **STEPS),
    env=_env(gcs),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from checkpoint at step {stopped}" in resumed.stdout
  got, want = helpers.load_params(workdir), helpers.load_params(reference)
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  steps = [r["step"] for r in helpers.metrics_lib.read_metrics(workdir) if "train/loss" in r]
  assert steps == list(range(1, 17))
  names = storage.listdir(workdir)
  assert {"config.json", "metrics.jsonl", "final_eval.json", "checkpoints", "tensorboard"} <= set(
    names
  ), names
  assert any(n.startswith("events.out.tfevents") for n in storage.listdir(f"{workdir}/tensorboard"))
  assert not os.path.exists(tmp_path / "gs:")  # nothing went to a local folder named after the URL

  harness = subprocess.run(
    # --force: training wrote its final evaluation's records; the harness computes them again here.
    [
      sys.executable,
      "-m",
      "vlm_jax.evaluate",
      "--workdir",
      workdir,
      "--tasks",
      "zero_shot",
      "--force",
    ],
    env=_env(gcs),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
  )
  assert harness.returncode == 0, harness.stderr[-3000:]
  assert "step 16 embedded_64px zero_shot: " in harness.stdout  # computed, not found
  records = storage.find_files(f"{workdir}/eval_records", ".json")
  assert [r.split("/eval_records/")[1] for r in records] == [
    "step_16/embedded_64px/retrieval.json",
    "step_16/embedded_64px/zero_shot.json",
  ], records
  table = subprocess.run(
    [sys.executable, "-m", "vlm_jax.tables", root, "--metrics", "zero_shot/shape_top1"],
    env=_env(gcs),
    capture_output=True,
    text=True,
    timeout=120,
    cwd=tmp_path,
  )
  assert table.returncode == 0, table.stderr[-3000:]
  record = storage.read_json(records[1])
  assert (
    f"{record['metrics']['zero_shot/shape_top1']:.3f} (n=1)" in table.stdout
  )  # the record, read from the bucket

  import vlm_jax  # pylint: disable=import-outside-toplevel

  model = vlm_jax.load(workdir)
  local = vlm_jax.load(str(reference))
  pixels = model.preprocess([np.full((32, 32, 3), 200, np.uint8)])
  assert model.step == 16
  np.testing.assert_array_equal(model.encode_image(pixels), local.encode_image(pixels))


def test_training_streams_tar_shards_from_a_bucket(gcs, tmp_path):
  from vlm_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  from vlm_jax.train import trainer  # pylint: disable=import-outside-toplevel

  root = f"gs://{gcs_lib.BUCKET}/{uuid.uuid4().hex[:8]}"
  paths = synthetic.write_shards(
    f"{root}/shards", 64, per_shard=16, image_size=32, log=lambda *a: None
  )
  assert [storage.basename(p) for p in paths] == [f"0000{i}.tar" for i in range(4)]
  config = helpers.micro_config(
    **{
      "data.name": "shards",
      "data.shards": f"{root}/shards/{{00000..00003}}.tar",
      "data.shuffle_buffer": 16,
      "data.tokenizer_path": f"{root}/shards/{synthetic.TOKENIZER_FILE}",
      "evals": {},
      "train.duration": "4 steps",
      "train.profile_steps": (1, 3),
    }
  )
  trainer.train(config, f"{root}/run", log=lambda *a: None)
  assert helpers.checkpoint_steps(f"{root}/run") == [3, 4]
  # The profiler writes local files; the trace is uploaded into the bucket workdir when it ends.
  assert storage.find_files(f"{root}/run/profile", ".xplane.pb")
  assert [
    r["step"] for r in helpers.metrics_lib.read_metrics(f"{root}/run") if "train/loss" in r
  ] == [2, 3, 4]


def test_a_damaged_checkpoint_in_a_bucket_is_set_aside_and_the_run_resumes_from_the_one_before(
  gcs, tmp_path, reference
):
  """As tests/test_damaged_checkpoints.py, in a bucket: a copy to the bucket cut short (an object holding
  half its bytes) is moved aside there (server-side copy and delete), and the resume equals an uninterrupted
  run."""
  workdir = f"gs://{gcs_lib.BUCKET}/{uuid.uuid4().hex[:8]}/damaged"

  def run(**extra):
    return subprocess.run(
      helpers.main_command(workdir, **STEPS, **extra),
      env=_env(gcs),
      capture_output=True,
      text=True,
      timeout=300,
      cwd=tmp_path,
    )

  first = run(**{"train.max_steps": 12})
  assert first.returncode == 0, first.stderr[-3000:]
  assert helpers.checkpoint_steps(workdir) == [4, 8, 12]
  arrays = [f for f in storage.find_files(f"{workdir}/checkpoints/12/state", "") if "/d/" in f]
  largest = max(arrays, key=lambda f: len(storage.read_bytes(f)))
  storage.write_bytes(largest, storage.read_bytes(largest)[: len(storage.read_bytes(largest)) // 2])
  resumed = run()
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"moved it to {workdir}/checkpoints/12.corrupt" in resumed.stdout
  assert "Resumed from checkpoint at step 8" in resumed.stdout
  assert storage.exists(f"{workdir}/checkpoints/12.corrupt/state/_METADATA")
  assert helpers.checkpoint_steps(workdir)[-1] == 16  # step 12 written again by the resumed run
  got, want = helpers.load_params(workdir), helpers.load_params(reference)
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)


def test_a_big_vision_checkpoint_converts_from_a_bucket(gcs, tmp_path):
  from tests.hf_models import make_hf_siglip  # pylint: disable=import-outside-toplevel
  from tests.test_convert import big_vision_npz  # pylint: disable=import-outside-toplevel
  from vlm_jax import convert  # pylint: disable=import-outside-toplevel

  model = make_hf_siglip(str(tmp_path / "hf_siglip"))
  big_vision_npz(model, tmp_path / "siglip.npz")
  root = f"gs://{gcs_lib.BUCKET}/{uuid.uuid4().hex[:8]}"
  storage.write_bytes(f"{root}/siglip.npz", (tmp_path / "siglip.npz").read_bytes())
  convert.convert(
    "big_vision_siglip",
    f"{root}/siglip.npz",
    str(tmp_path / "from_bucket"),
    tokenizer_path=str(tmp_path / "hf_siglip" / "spiece.model"),
    log=lambda *a: None,
  )
  convert.convert("hf_siglip", str(tmp_path / "hf_siglip"), str(tmp_path / "from_hf"), log=print)
  got, want = (
    helpers.load_params(tmp_path / "from_bucket"),
    helpers.load_params(tmp_path / "from_hf"),
  )
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
