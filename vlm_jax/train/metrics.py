"""Metrics as JSON lines and TensorBoard events in the workdir (process 0 only), and the progress line."""
import json
import math
import os
import time

import jax


def _scalar(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)  # JSON has no NaN; keep it visible


class MetricWriter:
  """Appends {"step": N, name: value, ...} lines to workdir/metrics.jsonl and writes TensorBoard scalars."""

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def drop_after(self, step: int):
    """On resume, forget lines logged after the checkpoint we resume from: they will be logged again."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, metrics: dict):
    if not self.enabled or not metrics:
      return
    record = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for name, value in metrics.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str):
  """All records of a run's metrics.jsonl, in order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
  """Throughput and ETA from wall time between log points (the first, compiling, step excluded)."""

  def __init__(self, total_steps: int, batch_size: int, flops_per_step: float | None, peak_flops: float | None):
    self.total, self.batch = total_steps, batch_size
    self.flops, self.peak = flops_per_step, peak_flops
    self._mark = None

  def start(self, step: int):
    self._mark = (step, time.perf_counter())

  def measure(self, step: int) -> dict:
    """Rates since the last call; {} if no step ran."""
    last_step, last_time = self._mark
    now = time.perf_counter()
    self._mark = (step, now)
    if step <= last_step:
      return {}
    step_time = (now - last_time) / (step - last_step)
    out = {"perf/step_time_s": step_time, "perf/images_per_s": self.batch / step_time,
           "perf/eta_s": step_time * (self.total - step)}
    if self.flops and self.peak:
      out["perf/mfu"] = self.flops / step_time / self.peak
    return out

  def line(self, step: int, metrics: dict) -> str:
    parts = [f"step {step}/{self.total}", f"loss {metrics.get('train/loss', float('nan')):.4f}"]
    if "perf/images_per_s" in metrics:
      parts += [f"{metrics['perf/images_per_s']:.1f} img/s", f"ETA {format_duration(metrics['perf/eta_s'])}"]
    if "perf/mfu" in metrics:
      parts.append(f"MFU {100 * metrics['perf/mfu']:.2f}%")
    return " | ".join(parts)
