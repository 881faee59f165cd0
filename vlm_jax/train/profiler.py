"""`train.profile_steps=(a, b)`: an XProf trace of train steps a+1 .. b, written to `workdir/profile`.

View it with TensorBoard's profile plugin (`pip install tensorboard tensorboard-plugin-profile`, then
`tensorboard --logdir WORKDIR/profile`) or at https://xprof.dev (its `*.xplane.pb`). Every process traces
its own devices into the same run folder, as XProf expects. In a bucket workdir the trace is written
locally and uploaded when it ends (the profiler writes local files only).
"""

import os
import tempfile

import jax

from vlm_jax import config_utils, storage


class StepProfiler:
  def __init__(self, steps, workdir: str, log=print):
    self.steps, self.log = config_utils.profile_steps(steps), log
    self.target = storage.join(workdir, "profile")
    self.remote = storage.is_remote(workdir)
    self.active = None  # the local folder being traced into

  def before_step(self, step: int):
    """Called with the number of steps done, before the next one is dispatched."""
    if self.steps and step == self.steps[0] and self.active is None:
      self.active = tempfile.mkdtemp(prefix="vlm_jax_profile_") if self.remote else self.target
      jax.profiler.start_trace(self.active)

  def after_step(self, step: int, outputs):
    if self.active is not None and step >= self.steps[1]:
      jax.block_until_ready(outputs)  # the trace holds the traced steps' device work
      self.stop()

  def stop(self):
    if self.active is None:
      return
    jax.profiler.stop_trace()
    if self.remote:
      # local path: the profiler wrote the trace into a local temporary folder; upload it file by file
      traced = [
        os.path.join(root, name) for root, _, files in os.walk(self.active) for name in files
      ]
      for local in traced:
        # local path: the file's name under the trace folder
        relative = os.path.relpath(local, self.active)
        storage.copy(local, storage.join(self.target, relative))
    self.active = None
    self.log(f"Wrote an XProf trace of steps {self.steps[0] + 1}-{self.steps[1]} to {self.target}")
