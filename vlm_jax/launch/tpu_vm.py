"""The Cloud TPU VM backend: per run, create a TPU VM (or a queued resource), put the code on every
worker, install it through launch/run_tpu.sh (a venv created once, jax[tpu] and vlm_jax), run
`python -m vlm_jax.main` on all workers with the run's workdir in a bucket, and watch it: when the VM is
preempted the launcher deletes and re-creates it and runs the same command, which resumes from the last
checkpoint in the bucket. `dry_run` prints every gcloud command instead of running it.

Sweep settings (`tpu`): zone, accelerator_type ("v4-8"), runtime_version ("tpu-ubuntu2204-base"), project,
spot, preemptible, queued (use queued resources), name_prefix, code ("copy": this checkout's files, or a
git URL to clone), delete_when_done (True), max_restarts (10), poll_s (30), max_parallel (1: runs, and so
VMs, at once), require_bucket (True: the sweep root must be gs://, so that checkpoints outlive a VM).
"""

import concurrent.futures
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import time

from vlm_jax.errors import ConfigError

DEFAULTS = dict(
  zone="",
  accelerator_type="v4-8",
  runtime_version="tpu-ubuntu2204-base",
  project="",
  spot=False,
  preemptible=False,
  queued=False,
  name_prefix="vlm-jax",
  code="copy",
  delete_when_done=True,
  max_restarts=10,
  poll_s=30,
  max_parallel=1,
  require_bucket=True,
)
GONE = ("PREEMPTED", "TERMINATED", "NOT_FOUND", "DELETING", "FAILED", "SUSPENDED")
REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # local path: this checkout


def vm_name(prefix: str, sweep_name: str, index: int) -> str:
  name = re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{sweep_name}-{index}".lower())
  return re.sub(r"-+", "-", name).strip("-")[:60]


class TpuVm:
  def __init__(
    self,
    settings: dict,
    *,
    gcloud: str = "gcloud",
    dry_run: bool = False,
    log=print,
    sleep=time.sleep,
  ):
    self.s = {**DEFAULTS, **(settings or {})}
    if not self.s["zone"]:
      raise ConfigError("the tpu_vm backend needs tpu.zone in the sweep file (e.g. us-central2-b)")
    self.gcloud, self.dry_run, self.log, self.sleep = gcloud, dry_run, log, sleep

  # --- gcloud ----------------------------------------------------------------------------------------

  def _common(self):
    return [f"--zone={self.s['zone']}"] + (
      [f"--project={self.s['project']}"] if self.s["project"] else []
    )

  def call(self, *args, capture: bool = False):
    """Runs `gcloud args...` (dry run: prints it). Returns (exit code, stdout)."""
    cmd = [self.gcloud, *args]
    if self.dry_run:
      self.log(shlex.join(cmd))
      return 0, "READY"
    result = subprocess.run(cmd, capture_output=capture, text=True, check=False)
    return result.returncode, (result.stdout or "").strip()

  def ssh(self, name: str, command: str) -> int:
    return self.call(
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      name,
      *self._common(),
      "--worker=all",
      f"--command={command}",
    )[0]

  def state(self, name: str) -> str:
    if self.s["queued"]:
      code, out = self.call(
        "compute",
        "tpus",
        "queued-resources",
        "describe",
        name,
        *self._common(),
        "--format=value(state.state)",
        capture=True,
      )
      return {"ACTIVE": "READY"}.get(out, out) if code == 0 else "NOT_FOUND"
    code, out = self.call(
      "compute",
      "tpus",
      "tpu-vm",
      "describe",
      name,
      *self._common(),
      "--format=value(state)",
      capture=True,
    )
    return out if code == 0 else "NOT_FOUND"

  def create(self, name: str):
    s = self.s
    flags = ["--spot"] if s["spot"] else (["--preemptible"] if s["preemptible"] else [])
    if s["queued"]:
      self.call(
        "compute",
        "tpus",
        "queued-resources",
        "create",
        name,
        f"--node-id={name}",
        *self._common(),
        f"--accelerator-type={s['accelerator_type']}",
        f"--runtime-version={s['runtime_version']}",
        *flags,
      )
    else:
      self.call(
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        name,
        *self._common(),
        f"--accelerator-type={s['accelerator_type']}",
        f"--version={s['runtime_version']}",
        *flags,
      )
    while not self.dry_run and self.state(name) != "READY":
      if self.state(name) in ("FAILED", "SUSPENDED"):
        raise RuntimeError(f"TPU {name} could not be created (state {self.state(name)})")
      self.sleep(self.s["poll_s"])

  def delete(self, name: str):
    if self.s["queued"]:
      self.call(
        "compute", "tpus", "queued-resources", "delete", name, *self._common(), "--quiet", "--force"
      )
    else:
      self.call("compute", "tpus", "tpu-vm", "delete", name, *self._common(), "--quiet")

  def put_code(self, name: str):
    """The code on every worker in ~/vlm_jax: this checkout's files (tracked or not ignored), or a clone."""
    if self.s["code"] != "copy":
      url = shlex.quote(self.s["code"])
      self.ssh(name, f"git clone --depth 1 {url} ~/vlm_jax || git -C ~/vlm_jax pull --ff-only")
      return
    # local path: the code's archive, one per VM (runs go in parallel)
    archive = os.path.join(tempfile.gettempdir(), f"vlm_jax_code_{name}.tar.gz")  # local path
    if not self.dry_run:
      files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
      ).stdout.split()
      with tarfile.open(archive, "w:gz") as tar:  # local path
        for f in files:
          if os.path.exists(os.path.join(REPO, f)):  # local path
            tar.add(os.path.join(REPO, f), arcname=f)  # local path
    self.call(
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      archive,
      f"{name}:~/vlm_jax.tar.gz",
      *self._common(),
      "--worker=all",
    )
    self.ssh(name, "mkdir -p ~/vlm_jax && tar xzf ~/vlm_jax.tar.gz -C ~/vlm_jax")

  # --- one run -------------------------------------------------------------------------------------

  def run(self, run, name: str) -> str:
    """Trains `run` on TPU VM `name` until it finishes, re-creating the VM after each preemption."""
    if self.s["require_bucket"] and "://" not in run.workdir:
      raise ConfigError(
        f"{run.workdir} is not a bucket: set the sweep's root to gs://... so that checkpoints "
        "outlive a preempted TPU VM (or tpu.require_bucket=False)"
      )
    train = "bash ~/vlm_jax/launch/run_tpu.sh train " + shlex.join(run.args())
    for attempt in range(self.s["max_restarts"] + 1):
      if self.dry_run or self.state(name) != "READY":
        if not self.dry_run and self.state(name) != "NOT_FOUND":
          self.delete(name)
        self.log(
          f"{run.name}: creating {name} ({self.s['accelerator_type']}, attempt {attempt + 1})"
        )
        self.create(name)
        self.put_code(name)
        self.ssh(name, "bash ~/vlm_jax/launch/run_tpu.sh setup")
      code = self.ssh(name, train)
      if self.dry_run:
        if self.s["delete_when_done"]:
          self.delete(name)
        return "dry-run"
      if (
        code == 0 and run.finished()
      ):  # exit 0 alone may be a SIGTERM stop (maintenance) with a checkpoint
        self.log(f"{run.name}: finished on {name}")
        if self.s["delete_when_done"]:
          self.delete(name)
        return "finished"
      state = self.state(name)
      if state in GONE:
        self.log(
          f"{run.name}: {name} is {state}; re-creating it and resuming from the last checkpoint"
        )
      elif code == 0:
        self.log(f"{run.name}: stopped with a checkpoint on {name} (SIGTERM); resuming it there")
      else:
        return f"failed (exit {code}, TPU state {state}; the VM is kept for inspection)"
    return f"failed: preempted more than {self.s['max_restarts']} times"


def launch(
  runs,
  sweep_name: str,
  settings: dict,
  *,
  dry_run: bool = False,
  log=print,
  gcloud: str = "gcloud",
  sleep=time.sleep,
) -> dict:
  """Runs the sweep's runs, `tpu.max_parallel` at a time, one TPU VM each (named <prefix>-<sweep>-<index>)."""
  backend = TpuVm(settings, gcloud=gcloud, dry_run=dry_run, log=log, sleep=sleep)
  names = [vm_name(backend.s["name_prefix"], sweep_name, i) for i in range(len(runs))]
  parallel = 1 if dry_run else max(1, int(backend.s["max_parallel"]))
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    results = list(pool.map(backend.run, runs, names))
  return {run.name: result for run, result in zip(runs, results)}


def delete_all(
  runs, sweep_name: str, settings: dict, *, dry_run: bool = False, log=print, gcloud: str = "gcloud"
):
  """Deletes the sweep's TPU VMs that still exist."""
  backend = TpuVm(settings, gcloud=gcloud, dry_run=dry_run, log=log)
  for i, _ in enumerate(runs):
    name = vm_name(backend.s["name_prefix"], sweep_name, i)
    if dry_run or backend.state(name) != "NOT_FOUND":
      backend.delete(name)
