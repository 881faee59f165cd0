"""`--config.train.profile_steps` writes an XProf trace of the chosen steps into the workdir, as typed on
the command line (relative workdir, quoted tuple), and a bad value is one line before anything runs."""

import glob
import gzip
import json

import pytest

from tests import helpers
from tests.test_user_paths import run


@pytest.mark.ci  # a CLI run with the profiler
def test_profile_steps_write_an_xprof_trace_into_a_relative_workdir(cwd):
  result = run(
    cwd,
    "--config",
    "experiments/clip_b32.py:tiny",
    "--workdir",
    "runs/profiled",
    *helpers.cli_overrides(**{"train.profile_steps": "(2, 4)", "train.mfu": True}),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Wrote an XProf trace of steps 3-4 to " in result.stdout
  assert "MFU " in result.stdout and "HFU " in result.stdout  # the progress line
  runs = glob.glob(str(cwd / "runs/profiled/profile/plugins/profile/*"))
  assert len(runs) == 1
  assert glob.glob(f"{runs[0]}/*.xplane.pb")
  (trace,) = glob.glob(f"{runs[0]}/*.trace.json.gz")
  events = json.loads(gzip.decompress(open(trace, "rb").read()))["traceEvents"]
  steps = {e["args"]["step_num"] for e in events if e.get("name") == "train" and "args" in e}
  assert steps == {"2", "3"}  # the annotated steps 3 and 4 (numbered from 0), nothing else
  metrics = [json.loads(line) for line in open(cwd / "runs/profiled/metrics.jsonl")]
  assert any("perf/mfu" in m and "perf/hfu" in m for m in metrics)


def test_a_bad_profile_range_is_one_line(cwd):
  result = run(
    cwd,
    "--config",
    "experiments/clip_b32.py:tiny",
    "--workdir",
    "runs/bad",
    "--config.train.profile_steps=(5, 2)",
  )
  assert result.returncode != 0
  assert "train.profile_steps=(5, 2): give two step numbers (a, b) with 0 <= a < b" in result.stderr
  assert not (cwd / "runs/bad").exists()
