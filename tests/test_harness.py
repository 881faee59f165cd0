"""The eval harness (records: contents, idempotence, crash safety), the linear probe and ablation tables."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from tests import helpers
from vlm_jax import config_utils, storage, tables
from vlm_jax.errors import ConfigError
from vlm_jax.eval import harness, linear_probe, suite
from vlm_jax.train import trainer


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("harness") / "clip_micro"
  config = helpers.micro_config(
    **{
      "evals.linear_probe": dict(
        every="0 steps", label_keys=("color",), shots=(2,), train_limit=64, val_size=32, limit=32
      )
    }
  )
  trainer.train(config, str(workdir), log=lambda *a: None)
  return workdir


def test_a_suite_says_once_which_datasets_are_missing(micro_run, tmp_path):
  from tests.test_benchmarks import write_karpathy  # pylint: disable=import-outside-toplevel

  write_karpathy(tmp_path / "data", np.random.default_rng(0))  # COCO only
  lines = []
  written = harness.evaluate(
    str(micro_run),
    all_checkpoints=True,
    suite_name="standard",
    data_dir=str(tmp_path / "data"),
    force=True,
    log=lines.append,
  )
  assert [(r["step"], r["dataset"], r["task"]) for r in map(storage.read_json, written)] == [
    (3, "coco_karpathy", "retrieval"),
    (6, "coco_karpathy", "retrieval"),
  ]
  # Two checkpoints, but each missing dataset is one line naming all its tasks.
  skipped = [line for line in lines if line.startswith("skipped ")]
  assert len(skipped) == len({line.split(": ", 1)[1] for line in skipped}), skipped
  assert (
    sum(
      line.startswith("skipped cifar10_zeroshot, cifar10_linear_probe: cifar10 is not in")
      for line in skipped
    )
    == 1
  ), skipped


def test_records_per_step_and_task_match_the_training_eval_and_are_written_once(micro_run):
  # Training wrote its final evaluation as records; tables read them.
  final = json.load(open(micro_run / "final_eval.json"))
  trained = {(r["step"], r["task"]): r["metrics"] for r in harness.read_records(str(micro_run))}
  assert {(6, "zero_shot"), (6, "retrieval"), (6, "linear_probe")} <= set(trained)
  for (step, _), metrics in trained.items():
    for name, value in metrics.items():
      assert step != 6 or value == final[f"eval/{name}"], name
  assert tables.load_run(str(micro_run))["metrics"]["zero_shot/shape_top1"] == pytest.approx(
    final["eval/zero_shot/shape_top1"]
  )
  written = harness.evaluate(
    str(micro_run),
    all_checkpoints=True,
    tasks=["zero_shot", "retrieval", "linear_probe"],
    force=True,  # computed again by the harness from the checkpoints
    log=lambda *a: None,
  )
  assert len(written) == 2 * 3  # checkpoints at steps 3 and 6
  record = json.load(open(harness.record_path(str(micro_run), 6, "embedded_64px", "zero_shot")))
  for name, value in record["metrics"].items():
    assert value == pytest.approx(final[f"eval/{name}"]), name
  config = config_utils.load_workdir_config(str(micro_run))
  assert (
    record["config_hash"] == harness.config_hash(config)
    and record["config"]["model.image.variant"] == "micro/8"
  )
  assert (
    record["num_examples"] == 32 and record["step"] == 6 and record["dataset"] == "embedded_64px"
  )
  assert record["preprocessing"]["image_size"] == 32 and record["wall_s"] > 0
  probe = json.load(open(harness.record_path(str(micro_run), 6, "embedded_64px", "linear_probe")))[
    "metrics"
  ]
  assert set(probe) == {
    "linear_probe/color_2shot_top1",
    "linear_probe/color_full_top1",
    "linear_probe/color_chance",
  }
  # Running again adds nothing and rewrites nothing.
  stamps = {p: os.stat(p).st_mtime_ns for p in written}
  assert (
    harness.evaluate(
      str(micro_run),
      all_checkpoints=True,
      tasks=["zero_shot", "retrieval", "linear_probe"],
      log=lambda *a: None,
    )
    == []
  )
  assert {p: os.stat(p).st_mtime_ns for p in written} == stamps


def test_a_crash_loses_no_finished_record(micro_run, monkeypatch):
  tasks = ["zero_shot", "retrieval", "linear_probe"]
  for task in tasks:
    path = harness.record_path(str(micro_run), 3, "embedded_64px", task)
    if os.path.exists(path):
      os.remove(path)

  def boom(self, params, image_emb):
    raise RuntimeError("simulated crash")

  monkeypatch.setattr(linear_probe.LinearProbe, "run", boom)
  with pytest.raises(RuntimeError, match="simulated crash"):
    harness.evaluate(str(micro_run), steps=[3], tasks=tasks, log=lambda *a: None)
  present = [
    t for t in tasks if os.path.exists(harness.record_path(str(micro_run), 3, "embedded_64px", t))
  ]
  assert present == ["zero_shot", "retrieval"]
  assert not any(
    f.endswith(".tmp") for _, _, files in os.walk(micro_run / harness.RECORDS) for f in files
  )
  monkeypatch.undo()
  written = harness.evaluate(str(micro_run), steps=[3], tasks=tasks, log=lambda *a: None)
  assert [os.path.basename(p) for p in written] == ["linear_probe.json"]


def test_tasks_must_fit_the_model(micro_run):
  with pytest.raises(ConfigError, match="does not fit"):
    harness.evaluate(str(micro_run), tasks=["vqa"], log=lambda *a: None)
  with pytest.raises(ConfigError, match="no checkpoint at step"):
    harness.evaluate(str(micro_run), steps=[5], log=lambda *a: None)
  config = config_utils.load_workdir_config(str(micro_run))
  from vlm_jax.assembly.experiment import Experiment

  model = Experiment(config, log=lambda *a: None).model
  assert set(harness.fitting_tasks(config, model)) == {"zero_shot", "retrieval", "linear_probe"}


def test_the_runs_own_evals_are_tasks_by_their_key(micro_run, tmp_path):
  """A linear probe on any classification dataset: an eval of the run's config with its own data
  (here CIFAR-10's pickles) is a task by its key, in the default set and by name."""
  from tests.test_benchmarks import write_cifar10

  run = tmp_path / "run"
  shutil.copytree(micro_run, run)
  write_cifar10(tmp_path / "data", np.random.default_rng(0))
  config = json.load(open(run / "config.json"))
  config["evals"]["cifar_probe"] = dict(
    name="linear_probe",
    every="0 steps",
    shots=[1],
    data=dict(name="cifar10", data_dir=str(tmp_path / "data")),
  )
  json.dump(config, open(run / "config.json", "w"))
  harness.evaluate(str(run), tasks=["cifar_probe"], log=lambda *a: None)
  record = json.load(open(harness.record_path(str(run), 6, "cifar10", "cifar_probe")))
  assert set(record["metrics"]) == {
    "linear_probe/label_1shot_top1",
    "linear_probe/label_full_top1",
    "linear_probe/label_chance",
  }
  assert record["num_examples"] == 12 and record["task"] == "cifar_probe"
  loaded = config_utils.load_workdir_config(str(run))
  from vlm_jax.assembly.experiment import Experiment

  model = Experiment(loaded, log=lambda *a: None).model
  assert "cifar_probe" in harness.fitting_tasks(loaded, model)
  with pytest.raises(ConfigError, match="the run's own evals: cifar_probe"):
    harness.evaluate(str(run), tasks=["flowers_probe"], log=lambda *a: None)


def test_ridge_probe_is_the_least_squares_solution():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 3))
  w, b = linear_probe.ridge_fit(x, y, 0.0)
  reference = np.linalg.lstsq(np.concatenate([x, np.ones((50, 1))], 1), y, rcond=None)[0]
  np.testing.assert_allclose(w, reference[:6], atol=1e-8)
  np.testing.assert_allclose(b, reference[6], atol=1e-8)
  # Regularised: the normal equations of |Xc W - Yc|^2 + l2 n |W|^2 hold.
  w, _ = linear_probe.ridge_fit(x, y, 0.1)
  xc, yc = x - x.mean(0), y - y.mean(0)
  np.testing.assert_allclose(xc.T @ (xc @ w - yc) + 0.1 * 50 * w, 0, atol=1e-8)
  labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
  picked = linear_probe.few_shot_indices(labels, 5)
  assert np.bincount(labels[picked]).tolist() == [5, 3, 5]
  # Separable classes are classified perfectly.
  centers = rng.normal(size=(4, 8)) * 5
  labels = rng.integers(0, 4, 200)
  feats = centers[labels] + rng.normal(size=(200, 8)) * 0.1
  assert np.all(
    linear_probe.ridge_classify(feats[:100], labels[:100], feats[100:], 4, 1e-4) == labels[100:]
  )


def write_run(root, name, config, metrics, seed, axes=None, step=100):
  workdir = root / name
  os.makedirs(workdir)
  (workdir / "config.json").write_text(json.dumps({**config, "seed": seed}))
  for task, values in metrics.items():
    path = harness.record_path(str(workdir), step, "embedded_64px", task)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    json.dump(
      {"step": step, "dataset": "embedded_64px", "task": task, "metrics": values}, open(path, "w")
    )
  # An older step's record must not count.
  old = harness.record_path(str(workdir), step - 50, "embedded_64px", "zero_shot")
  os.makedirs(os.path.dirname(old), exist_ok=True)
  json.dump(
    {
      "step": step - 50,
      "dataset": "embedded_64px",
      "task": "zero_shot",
      "metrics": {"zero_shot/shape_top1": -1.0},
    },
    open(old, "w"),
  )
  with open(workdir / "metrics.jsonl", "w") as f:
    for s in (10, 20):
      f.write(json.dumps({"step": s, "train/loss": 3.0 / s + seed}) + "\n")
  if axes:
    (workdir / "sweep.json").write_text(json.dumps({"axes": {**axes, "seed": seed}}))
  return workdir


def test_tables_group_seeds_mark_the_best_and_show_what_varies(tmp_path):
  base = {"model": {"name": "clip"}, "optim": {"lr": 1e-3}, "batch_size": 128}
  other = {"model": {"name": "siglip"}, "optim": {"lr": 1e-3}, "batch_size": 128}
  write_run(
    tmp_path, "a0", base, {"zero_shot": {"zero_shot/shape_top1": 0.8}, "x": {"train_loss": 2.0}}, 0
  )
  write_run(
    tmp_path, "a1", base, {"zero_shot": {"zero_shot/shape_top1": 0.9}, "x": {"train_loss": 1.0}}, 1
  )
  write_run(
    tmp_path, "b0", other, {"zero_shot": {"zero_shot/shape_top1": 0.5}, "x": {"train_loss": 0.5}}, 0
  )
  runs = [tables.load_run(w) for w in tables.find_runs([str(tmp_path)])]
  table = tables.build_table(runs, ["zero_shot/shape_top1", "train_loss"])
  assert table["keys"] == ["model.name"]
  first, second = table["rows"]
  assert first["values"] == {"model.name": "clip"} and first["runs"] == ["a0", "a1"]
  mean, std, n = first["stats"]["zero_shot/shape_top1"]
  assert (mean, n) == (pytest.approx(0.85), 2) and std == pytest.approx(np.std([0.8, 0.9], ddof=1))
  assert second["stats"]["zero_shot/shape_top1"][2] == 1 and math.isnan(
    second["stats"]["zero_shot/shape_top1"][1]
  )
  assert table["best"] == {"zero_shot/shape_top1": 0, "train_loss": 1}  # losses: lower is better
  md = tables.render(table, "md")
  assert "| model.name | zero_shot/shape_top1 | train_loss |" in md
  assert "**0.850 ± 0.071 (n=2)**" in md and "**0.500 (n=1)**" in md
  latex = tables.render(table, "latex")
  assert "\\textbf{0.850 $\\pm$ 0.071 (n=2)}" in latex and "\\begin{tabular}{lrr}" in latex
  rows = list(__import__("csv").reader(tables.render(table, "csv").splitlines()))
  assert rows[0][:5] == [
    "model.name",
    "zero_shot/shape_top1_mean",
    "zero_shot/shape_top1_std",
    "zero_shot/shape_top1_n",
    "zero_shot/shape_top1_best",
  ]
  assert rows[1][:5] == ["clip", "0.85", f"{np.std([0.8, 0.9], ddof=1):.6g}", "2", "1"]
  # The command line writes the file and the plots.
  out = tmp_path / "t.md"
  tables.main(
    [
      str(tmp_path),
      "--metrics",
      "zero_shot/shape_top1",
      "--out",
      str(out),
      "--plots",
      str(tmp_path / "p"),
    ]
  )
  assert out.read_text() == tables.render(tables.build_table(runs, ["zero_shot/shape_top1"]), "md")
  assert os.path.getsize(tmp_path / "p" / "train_loss.png") > 1000
  with pytest.raises(SystemExit, match="no run has metric"):
    tables.main([str(tmp_path), "--metrics", "nope"])


def test_sweep_axes_are_the_columns_when_runs_have_them(tmp_path):
  cfg = lambda lr, width: {"optim": {"lr": lr}, "model": {"width": width, "other": lr * 2}}
  for i, lr in enumerate((1e-3, 2e-3)):
    write_run(
      tmp_path,
      f"r{i}",
      cfg(lr, 8),
      {"zero_shot": {"zero_shot/shape_top1": 0.5 + i}},
      0,
      axes={"optim.lr": lr},
    )
  runs = [tables.load_run(w) for w in tables.find_runs([str(tmp_path)])]
  assert tables.build_table(runs, ["zero_shot/shape_top1"])["keys"] == [
    "optim.lr"
  ]  # not model.other


def test_tables_tell_datasets_apart_and_give_the_benchmark_table(tmp_path, capsys):
  """Two datasets' zero-shot records: `dataset:metric` names each, the bare name is ambiguous and left
  out; --suite standard is one row per (run, dataset, task) at its latest step."""
  for name, seed in (("clip_a", 0), ("clip_b", 1)):
    workdir = write_run(tmp_path, name, {"model": {"name": "clip"}}, {}, seed)
    for dataset, step, top1 in (
      ("imagenet", 50, 0.1),
      ("imagenet", 100, 0.3 + seed),
      ("cifar10", 100, 0.9),
    ):
      path = harness.record_path(str(workdir), step, dataset, "zero_shot")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      metrics = {"zero_shot/label_top1": top1, "zero_shot/label_top5": 1.0}
      json.dump(
        {"step": step, "dataset": dataset, "task": "zero_shot", "metrics": metrics}, open(path, "w")
      )
  run = tables.load_run(str(tmp_path / "clip_b"))
  assert run["metrics"]["imagenet:zero_shot/label_top1"] == 1.3
  assert run["metrics"]["cifar10:zero_shot/label_top1"] == 0.9
  assert "zero_shot/label_top1" not in run["metrics"]  # two datasets have it
  assert run["metrics"]["zero_shot/shape_top1"] == -1.0  # one dataset (the run's own) has it
  tables.main([str(tmp_path), "--suite", "standard", "--format", "csv"])
  rows = [line.split(",") for line in capsys.readouterr().out.strip().splitlines()]
  assert rows[0] == ["run", "step", "dataset", "task", "examples", "acc1", "acc5"]
  assert sorted(rows[1:]) == [
    ["clip_a", "100", "cifar10", "zero_shot", "", "0.9000", "1.0000"],
    ["clip_a", "100", "imagenet", "zero_shot", "", "0.3000", "1.0000"],
    ["clip_b", "100", "cifar10", "zero_shot", "", "0.9000", "1.0000"],
    ["clip_b", "100", "imagenet", "zero_shot", "", "1.3000", "1.0000"],
  ]


def test_records_of_different_example_counts_never_stand_for_each_other(tmp_path):
  """A record limited to N examples is its own record: it does not satisfy a full request (nor the full one
  a limited request), a limited record an older version wrote under the full name is kept under its own,
  and where the ablation table meets values of different counts each cell says how many."""
  path = harness.record_path(str(tmp_path), 4, "imagenet", "zero_shot")
  old = {"task": "zero_shot", "num_examples": 5, "task_config": {"limit": 5}, "metrics": {}}
  os.makedirs(os.path.dirname(path))
  json.dump(old, open(path, "w"))
  assert not harness._has_record(path, {"limit": 0})  # pylint: disable=protected-access
  kept = json.load(open(path[: -len(".json")] + "_first5.json"))
  assert (kept["task"], kept["limit"], kept["num_examples"]) == ("zero_shot_first5", 5, 5)
  assert harness._has_record(path, {"limit": 5})  # pylint: disable=protected-access
  config = {"name": "zero_shot", "data": {"name": "imagenet"}, "limit": 5}
  assert suite.record_task(config) == "zero_shot_first5"
  assert suite.record_task({**config, "limit": 0}) == "zero_shot"

  for name, count, value in (("a", 2000, 0.8), ("b", 64, 0.6)):
    metrics = {"zero_shot": {"zero_shot/shape_top1": value}}
    workdir = write_run(tmp_path, name, {"model": {"name": name}}, metrics, 0)
    record_file = harness.record_path(str(workdir), 100, "embedded_64px", "zero_shot")
    record = json.load(open(record_file))
    json.dump({**record, "num_examples": count}, open(record_file, "w"))
  runs = [tables.load_run(str(tmp_path / name)) for name in ("a", "b")]
  md = tables.render(tables.build_table(runs, ["zero_shot/shape_top1"]), "md")
  assert "**0.800 (n=1)** [2000 examples]" in md and "0.600 (n=1) [64 examples]" in md


def test_a_folder_without_train_path_says_how_it_split_as_its_evaluation_starts(
  micro_run, tmp_path
):
  """`python -m vlm_jax.evaluate` on a run's own folder eval: the progress line names the data and its split
  (zero-shot on a folder without data.train_path evaluates the hash-chosen test half)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  from PIL import Image  # pylint: disable=import-outside-toplevel

  run = tmp_path / "run"
  shutil.copytree(micro_run, run)
  for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
    os.makedirs(tmp_path / "folder" / label)
    for i in range(8):
      Image.new("RGB", (16, 16), colour).save(tmp_path / "folder" / label / f"{i}.png")
  config = json.load(open(run / "config.json"))
  config["evals"]["colours"] = dict(
    name="zero_shot", every="0 steps", data=dict(name="folder", path=str(tmp_path / "folder"))
  )
  json.dump(config, open(run / "config.json", "w"))
  result = subprocess.run(
    [sys.executable, "-m", "vlm_jax.evaluate", "--workdir", "run", "--tasks", "colours"],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.load(open(harness.record_path(str(run), 6, "folder_folder", "colours")))
  [line] = [line for line in result.stdout.splitlines() if line.startswith("  evaluating colours")]
  assert (
    f"on {record['num_examples']} examples of image folder {tmp_path / 'folder'} (2 classes" in line
  )
  assert "split by a hash of the file names into" in line and "data.train_path" in line
