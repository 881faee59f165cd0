"""Sweeps: expansion, the local backend end to end (with the table built from it), the SLURM script, and
the TPU VM backend against a fake gcloud that preempts the first run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers
from vlm_jax import storage, tables
from vlm_jax.errors import ConfigError
from vlm_jax.launch import slurm
from vlm_jax.launch import sweep as sweep_lib

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes")


def test_expansion_names_runs_by_their_axes():
  sweep = dict(
    name="s",
    base="experiments/clip_b32.py:tiny",
    grid={"optim.lr": [1e-3, 2e-3], "batch_size": [8, 16]},
    zip={"config": ["a.py:tiny", "b.py:tiny"], "optim.warmup": ["1 steps", "2 steps"]},
    seeds=[0, 1],
    overrides={"train.duration": "5 steps"},
    root="/r",
  )
  runs = sweep_lib.expand(sweep)
  assert len(runs) == 4 * 2 * 2 and len({r.name for r in runs}) == 16
  run = runs[0]
  assert run.name == "a-tiny__warmup1steps__lr0.001__batch_size8__seed0"
  assert run.config == "a.py:tiny" and run.workdir == f"/r/s/{run.name}"
  assert run.overrides == {
    "train.duration": "5 steps",
    "optim.warmup": "1 steps",
    "optim.lr": 1e-3,
    "batch_size": 8,
    "seed": 0,
  }
  assert "--config.train.duration=5 steps" in run.args() and "--config.seed=0" in run.args()
  with pytest.raises(ConfigError, match="one length"):
    sweep_lib.expand({**sweep, "zip": {"a": [1, 2], "b": [1]}})
  assert sweep_lib.expand({**sweep, "root": "gs://b/x"})[0].workdir.startswith("gs://b/x/s/")


def micro_sweep_file(tmp_path, seeds=(0, 1), **overrides):
  values = {
    **helpers.MICRO,
    "train.duration": "4 steps",
    "train.checkpoint_every": "2 steps",
    **overrides,
  }
  path = tmp_path / "sweep.py"
  path.write_text(
    f"def get_sweep():\n  return dict(name='micro', base={helpers.TINY!r}, seeds={list(seeds)!r}, "
    f"overrides={values!r}, root={str(tmp_path / 'runs')!r})\n"
  )
  return path


@pytest.mark.ci  # a sweep of CLI runs
def test_local_backend_runs_a_sweep_skips_finished_runs_and_the_table_groups_seeds(tmp_path):
  path = micro_sweep_file(tmp_path)
  env = helpers.subprocess_env(1)
  cmd = [
    sys.executable,
    os.path.join(helpers.ROOT, "launch", "sweep.py"),
    str(path),
    "--backend",
    "local",
  ]
  result = subprocess.run(
    cmd, env=env, capture_output=True, text=True, timeout=600, cwd=helpers.ROOT
  )
  assert result.returncode == 0, result.stdout + result.stderr
  runs = sweep_lib.expand(sweep_lib.load_sweep(str(path)))
  finals = [json.load(open(os.path.join(r.workdir, "final_eval.json"))) for r in runs]
  assert [f["step"] for f in finals] == [4, 4]
  assert json.load(open(os.path.join(runs[1].workdir, "sweep.json")))["axes"] == {"seed": 1}
  again = subprocess.run(
    cmd, env=env, capture_output=True, text=True, timeout=300, cwd=helpers.ROOT
  )
  assert again.returncode == 0 and again.stdout.count("finished earlier, skipping") == 2
  table = tables.build_table([tables.load_run(r.workdir) for r in runs], ["zero_shot/shape_top1"])
  assert len(table["rows"]) == 1
  values = [f["eval/zero_shot/shape_top1"] for f in finals]
  mean, std, n = table["rows"][0]["stats"]["zero_shot/shape_top1"]
  assert (
    n == 2
    and mean == pytest.approx(np.mean(values))
    and (std == pytest.approx(np.std(values, ddof=1)))
  )


def test_slurm_scripts(tmp_path, monkeypatch):
  run = sweep_lib.expand(
    dict(
      name="s",
      base="experiments/clip_b32.py:tiny",
      seeds=[3],
      root="runs/x",
      overrides={"train.duration": "5 steps"},
    )
  )[0]
  text = slurm.script(
    run, "s", dict(nodes=4, gpus_per_node=8, time="02:00:00", partition="gpu", venv="/opt/venv")
  )
  lines = text.splitlines()
  assert lines[0] == "#!/bin/bash"
  for expected in (
    "#SBATCH --nodes=4",
    "#SBATCH --ntasks-per-node=1",
    "#SBATCH --gpus-per-node=8",
    "#SBATCH --time=02:00:00",
    "#SBATCH --partition=gpu",
    "#SBATCH --requeue",
    "source /opt/venv/bin/activate",
  ):
    assert expected in lines, expected
  srun = [l for l in lines if l.startswith("srun ")]
  assert srun == [
    f"srun python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir "
    f"{os.path.abspath(run.workdir)} '--config.train.duration=5 steps' --config.seed=3"
  ]
  # Submission calls sbatch with the script written into the workdir.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(
    f'#!/bin/bash\necho "$@" >> {tmp_path}/sbatch.log\necho Submitted batch job 42\n'
  )
  (bin_dir / "sbatch").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  run.workdir = str(tmp_path / "w")
  status = slurm.submit([run], "s", {}, log=lambda *a: None)
  assert status == {run.name: "Submitted batch job 42"}
  assert (tmp_path / "sbatch.log").read_text().strip() == str(tmp_path / "w" / "sbatch.sh")


@pytest.mark.ci  # ~40 s of subprocesses: CI's second tier keeps the fast one under 10 minutes
def test_tpu_vm_backend_recreates_a_preempted_vm_and_the_run_resumes(tmp_path):
  path = micro_sweep_file(tmp_path, seeds=(0,), **{"train.duration": "6 steps"})
  text = path.read_text().replace(
    "seeds=", "tpu=dict(zone='z1', accelerator_type='v4-8', require_bucket=False, poll_s=0), seeds="
  )
  path.write_text(text)
  fake = tmp_path / "gcloud_state"
  fake.mkdir()
  (fake / "preempt_once").write_text("")
  env = dict(helpers.subprocess_env(1), FAKE_GCLOUD_DIR=str(fake), FAKE_VENV=sys.prefix)
  cmd = [
    sys.executable,
    os.path.join(helpers.ROOT, "launch", "sweep.py"),
    str(path),
    "--backend",
    "tpu_vm",
    "--gcloud",
    os.path.join(FAKES, "gcloud"),
  ]
  result = subprocess.run(
    cmd, env=env, capture_output=True, text=True, timeout=600, cwd=helpers.ROOT
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  calls = (fake / "calls.log").read_text().splitlines()
  verbs = [c.split()[3] for c in calls if c.split()[3] in ("create", "delete")]
  assert verbs == [
    "create",
    "delete",
    "create",
    "delete",
  ]  # preempted: re-created; finished: deleted
  assert (
    sum("run_tpu.sh train" in c for c in calls) == 2
    and sum("run_tpu.sh setup" in c for c in calls) == 2
  )
  assert all("--worker=all" in c for c in calls if " ssh " in f" {c} ")
  assert "Resumed from checkpoint at step" in result.stdout
  workdir = sweep_lib.expand(sweep_lib.load_sweep(str(path)))[0].workdir
  assert json.load(open(os.path.join(workdir, "final_eval.json")))["step"] == 6
  dry = subprocess.run(
    cmd + ["--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=helpers.ROOT
  )
  assert (
    "tpu-vm create" in dry.stdout
    and "--accelerator-type=v4-8" in dry.stdout
    and "--zone=z1" in dry.stdout
  )


def test_a_slurm_job_stopped_by_its_time_limit_requeues_itself_until_the_run_finishes(tmp_path):
  """The sbatch script, run with stand-ins for srun (the trainer stopped by SIGTERM: exit 0, unfinished)
  and scontrol: it activates the launcher's environment, then requeues the job; once the run has
  finished it does not."""
  workdir = tmp_path / "run"
  run = sweep_lib.Run(
    name="r", config="experiments/clip_b32.py:tiny", overrides={}, axes={}, workdir=str(workdir)
  )
  text = slurm.script(run, "s", {})
  assert f"source {os.path.join(sys.prefix, 'bin', 'activate')}" in text.splitlines()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("srun", "scontrol"):
    (bin_dir / name).write_text(f'#!/bin/bash\necho {name} "$@" >> {tmp_path}/calls.log\n')
    (bin_dir / name).chmod(0o755)
  script = tmp_path / "sbatch.sh"
  script.write_text(text)
  env = dict(
    helpers.subprocess_env(1), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="42"
  )
  first = subprocess.run(
    ["bash", str(script)], env=env, capture_output=True, text=True, timeout=120
  )
  assert first.returncode == 0, first.stderr
  calls = (tmp_path / "calls.log").read_text().splitlines()
  assert calls[0].startswith("srun python -m vlm_jax.main") and calls[1:] == ["scontrol requeue 42"]
  workdir.mkdir()
  (workdir / "final_eval.json").write_text('{"step": 400}')
  (tmp_path / "calls.log").unlink()
  second = subprocess.run(
    ["bash", str(script)], env=env, capture_output=True, text=True, timeout=120
  )
  assert second.returncode == 0 and (tmp_path / "calls.log").read_text().splitlines() == [calls[0]]


@pytest.mark.ci
def test_tpu_vm_sweeps_run_max_parallel_runs_at_once_into_a_bucket(tmp_path, gcs):
  """Two runs, tpu.max_parallel=2, the sweep's root a gs:// bucket (on the emulator): both VMs exist at once,
  every run finishes in the bucket, and a preempted one is re-created and resumes from the bucket."""
  import uuid  # pylint: disable=import-outside-toplevel

  root = f"gs://bucket/{uuid.uuid4().hex[:8]}"
  values = {**helpers.MICRO, "train.duration": "16 steps", "train.checkpoint_every": "4 steps"}
  path = tmp_path / "sweep.py"
  path.write_text(
    f"def get_sweep():\n  return dict(name='micro', base={helpers.TINY!r}, seeds=[0, 1], "
    f"overrides={values!r}, root={root!r}, tpu=dict(zone='z1', max_parallel=2, poll_s=0))\n"
  )
  fake = tmp_path / "gcloud_state"
  fake.mkdir()
  (fake / "preempt_once").write_text("")
  env = dict(helpers.subprocess_env(1), **gcs, FAKE_GCLOUD_DIR=str(fake), FAKE_VENV=sys.prefix)
  cmd = [
    sys.executable,
    os.path.join(helpers.ROOT, "launch", "sweep.py"),
    str(path),
    "--backend",
    "tpu_vm",
    "--gcloud",
    os.path.join(FAKES, "gcloud"),
  ]
  result = subprocess.run(
    cmd, env=env, capture_output=True, text=True, timeout=900, cwd=helpers.ROOT
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  calls = [c.split() for c in (fake / "calls.log").read_text().splitlines()]
  lifecycle = [(c[3], c[4]) for c in calls if c[3] in ("create", "delete")]
  first_delete = next(i for i, (verb, _) in enumerate(lifecycle) if verb == "delete")
  assert {name for verb, name in lifecycle[:first_delete] if verb == "create"} == {
    "vlm-jax-micro-0",
    "vlm-jax-micro-1",
  }  # both VMs up before either run ended
  assert sum(verb == "create" for verb, _ in lifecycle) == 3  # one preempted and re-created
  assert "Resumed from checkpoint at step" in result.stdout
  for run in sweep_lib.expand(sweep_lib.load_sweep(str(path))):
    assert run.finished() and storage.read_json(f"{run.workdir}/final_eval.json")["step"] == 16
