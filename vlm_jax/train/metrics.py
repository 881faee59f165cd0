"""Metrics as JSON lines and TensorBoard events in the workdir (process 0 only), and the progress line."""

import hashlib
import json
import math
import time

import jax

from vlm_jax import storage
from vlm_jax.errors import ConfigError


def _scalar(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)  # JSON has no NaN; keep it visible


class _ObjectRecordWriter:
  """tensorboardX's record writer for bucket URLs: a bucket object cannot be appended to, so every flush
  uploads the whole events file (scalars only: small), and TensorBoard reading the bucket sees it live."""

  def __init__(self, path: str):
    self.path, self._data = path, bytearray()

  def write(self, data: bytes):
    self._data += data

  def flush(self):
    storage.write_bytes(self.path, bytes(self._data))

  def close(self):
    self.flush()


class _ObjectRecordWriterFactory:
  def open(self, path):
    return _ObjectRecordWriter(path)

  def directory_check(self, path):  # buckets have no folders to create
    del path


def _register_bucket_writers():
  from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel

  for scheme in ("gs", "s3"):
    record_writer.register_writer_factory(scheme, _ObjectRecordWriterFactory())


def _wandb_run(workdir: str, config):
  """A W&B run for `config.train.wandb`, resumed across restarts of the same workdir (its id is derived
  from the workdir, so a resumed run continues the same W&B run)."""
  try:
    import wandb  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError(
      'train.wandb=True needs the wandb package: pip install -e ".[wandb]"'
    ) from None
  train = config.train
  name = train.get("wandb_name") or storage.basename(workdir)
  run_id = hashlib.sha256(workdir.encode()).hexdigest()[:16]
  local = None if storage.is_remote(workdir) else storage.join(workdir, "wandb_files")
  if local:
    storage.makedirs(local)
  return wandb.init(
    project=train.get("wandb_project") or "vlm_jax",
    entity=train.get("wandb_entity") or None,
    name=name,
    id=run_id,
    resume="allow",
    tags=list(train.get("wandb_tags") or ()),
    config=json.loads(config.to_json_best_effort()),
    dir=local,  # a bucket workdir: W&B's own local folder (WANDB_DIR), then its servers
  )


class MetricWriter:
  """Appends {"step": N, name: value, ...} lines to workdir/metrics.jsonl and writes TensorBoard scalars
  (and W&B's, with `train.wandb`).

  Local files are appended to; in a bucket the file is rewritten whole at each write (an object cannot be
  appended to), so it is complete in the bucket after every log point."""

  def __init__(self, workdir: str, *, enabled: bool | None = None, config=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = storage.join(workdir, "metrics.jsonl")
    self._remote = storage.is_remote(workdir)
    self._lines = None  # a bucket file's content, kept to rewrite it
    self._tb = None
    self._wandb = None
    if self.enabled and config is not None and config.train.get("wandb", False):
      self._wandb = _wandb_run(workdir, config)
    if self.enabled:
      storage.makedirs(workdir)
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

      _register_bucket_writers()
      self._tb = SummaryWriter(storage.join(workdir, "tensorboard"))
      if self._remote:
        self._lines = (
          storage.read_text(self.path).splitlines(keepends=True)
          if storage.exists(self.path)
          else []
        )

  def drop_after(self, step: int):
    """On resume, forget lines logged after the checkpoint we resume from: they will be logged again."""
    if not self.enabled or not storage.exists(self.path):
      return
    lines = storage.read_text(self.path).splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    storage.write_text(self.path, "".join(kept))
    if self._remote:
      self._lines = kept

  def write(self, step: int, metrics: dict):
    if not self.enabled or not metrics:
      return
    line = json.dumps({"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}) + "\n"
    if self._remote:
      self._lines.append(line)
      storage.write_text(self.path, "".join(self._lines))
    else:
      with storage.path(self.path).open("a") as f:
        f.write(line)
    for name, value in metrics.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log({k: float(v) for k, v in metrics.items()}, step=int(step))

  def close(self):
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def read_metrics(workdir: str):
  """All records of a run's metrics.jsonl, in order."""
  return [
    json.loads(line)
    for line in storage.read_text(storage.join(workdir, "metrics.jsonl")).splitlines()
    if line.strip()
  ]


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
  """Throughput and ETA from wall time between log points (the first, compiling, step excluded)."""

  HEARTBEAT_S = 10.0  # between log points, a short line at most this often shows the run is alive

  def __init__(self, total_steps: int, batch_size: int, step_flops=None):
    """step_flops: a `core.flops.StepFlops` for MFU and HFU (None: neither is reported)."""
    self.total, self.batch = total_steps, batch_size
    self.step_flops = step_flops
    self._mark = None
    self._printed = time.perf_counter()

  def start(self, step: int):
    self._mark = (step, time.perf_counter())

  def heartbeat_due(self) -> bool:
    return time.perf_counter() - self._printed >= self.HEARTBEAT_S

  def heartbeat(self, step: int) -> str:
    """Steps dispatched so far and the rate since the last log point (no device sync)."""
    self._printed = time.perf_counter()
    last_step, last_time = self._mark
    parts = [f"step {step}/{self.total}"]
    if step > last_step:
      step_time = (self._printed - last_time) / (step - last_step)
      parts += [
        f"{self.batch / step_time:.1f} img/s",
        f"ETA {format_duration(step_time * (self.total - step))}",
      ]
    return " | ".join(parts)

  def measure(self, step: int) -> dict:
    """Rates since the last call; {} if no step ran."""
    last_step, last_time = self._mark
    now = time.perf_counter()
    self._mark = (step, now)
    if step <= last_step:
      return {}
    step_time = (now - last_time) / (step - last_step)
    out = {
      "perf/step_time_s": step_time,
      "perf/images_per_s": self.batch / step_time,
      "perf/eta_s": step_time * (self.total - step),
    }
    if self.step_flops:
      out.update(self.step_flops.utilisation(step_time))
    return out

  def line(self, step: int, metrics: dict) -> str:
    self._printed = time.perf_counter()
    parts = [f"step {step}/{self.total}", f"loss {metrics.get('train/loss', float('nan')):.4f}"]
    if "perf/images_per_s" in metrics:
      parts += [
        f"{metrics['perf/images_per_s']:.1f} img/s",
        f"ETA {format_duration(metrics['perf/eta_s'])}",
      ]
    for key in ("mfu", "hfu"):
      if f"perf/{key}" in metrics:
        parts.append(f"{key.upper()} {100 * metrics[f'perf/{key}']:.1f}%")
    return " | ".join(parts)
