"""Weights & Biases logging (`train.wandb=True`), offline: the run's transaction log holds every scalar of
metrics.jsonl at its step, the config and the tags; W&B missing is a one-line error."""

import glob
import json
import struct

import pytest

from tests import helpers
from vlm_jax.errors import ConfigError
from vlm_jax.train import metrics as metrics_lib
from vlm_jax.train import trainer

wandb = pytest.importorskip("wandb", reason="the wandb extra (pip install -e '.[wandb]')")


def wandb_records(path):
  """The protobuf `Record`s of a W&B transaction log (.wandb): a 7-byte header (':W&B', magic,
  version), then LevelDB log blocks of 32 KiB whose chunks (checksum, 2-byte length, type: full, first,
  middle, last) carry them."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel

  data = open(path, "rb").read()
  assert data[:4] == b":W&B", data[:7]
  pos, pending = 7, b""
  while pos + 7 <= len(data):
    left = 32768 - pos % 32768
    if left < 7:  # a block's tail too short for a header is padding
      pos += left
      continue
    length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
    chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
    if kind == 0:  # zero padding
      continue
    pending += chunk
    if kind in (1, 4):  # full, last
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record
      pending = b""


def test_offline_wandb_run_holds_the_scalars_config_and_tags(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = helpers.micro_config(
    **{"train.wandb": True, "train.wandb_tags": ("micro", "test"), "train.duration": "4 steps"}
  )
  workdir = tmp_path / "clip_micro"
  trainer.train(config, str(workdir), log=lambda *a: None)
  (log,) = glob.glob(str(workdir / "wandb_files" / "wandb" / "offline-run-*" / "run-*.wandb"))
  history, run = {}, None
  for record in wandb_records(log):
    kind = record.WhichOneof("record_type")
    if kind == "history":
      row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
      history.setdefault(row["_step"], {}).update(row)
    elif kind == "run":
      run = record.run
  logged = metrics_lib.read_metrics(str(workdir))
  assert logged and {r["step"] for r in logged} <= set(history)
  for line in logged:
    for name, value in line.items():
      if name != "step":
        assert history[line["step"]][name] == pytest.approx(value, rel=1e-7), (line["step"], name)
  assert list(run.tags) == ["micro", "test"] and run.display_name == "clip_micro"
  config_keys = {u.key for u in run.config.update}
  assert {"model", "optim", "objectives", "data", "train"} <= config_keys


def test_wandb_missing_is_a_one_line_error(tmp_path, monkeypatch):
  import builtins  # pylint: disable=import-outside-toplevel

  real_import = builtins.__import__
  monkeypatch.setattr(
    builtins,
    "__import__",
    lambda name, *a, **k: (
      (_ for _ in ()).throw(ImportError(name)) if name == "wandb" else real_import(name, *a, **k)
    ),
  )
  config = helpers.micro_config(**{"train.wandb": True})
  with pytest.raises(
    ConfigError, match=r'train.wandb=True needs the wandb package: pip install -e "\.\[wandb\]"'
  ):
    metrics_lib.MetricWriter(str(tmp_path), enabled=True, config=config)
