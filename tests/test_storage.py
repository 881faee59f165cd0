"""The path layer: every workdir file goes through vlm_jax.storage, so a bucket workdir is whole."""

import ast
import os
import re

import pytest

from tests import helpers
from vlm_jax import storage
from vlm_jax.errors import ConfigError

# Modules that read or write workdirs (runs, converted models, sweeps, records, tables).
WORKDIR_MODULES = [
  "vlm_jax/main.py",
  "vlm_jax/config_utils.py",
  "vlm_jax/inference.py",
  "vlm_jax/tables.py",
  "vlm_jax/convert/__init__.py",
  "vlm_jax/tools/codebook.py",
  "vlm_jax/tools/prepare.py",
  "vlm_jax/evaluate.py",
] + [
  os.path.join(folder, f)
  for folder in ("vlm_jax/train", "vlm_jax/eval", "vlm_jax/launch")
  for f in sorted(os.listdir(os.path.join(helpers.ROOT, folder)))
  if f.endswith(".py")
]
RAW_FILE_ACCESS = re.compile(
  r"(?<![\w.])(?<!def )open\(|\bos\.open\(|\bos\.path\.|\bos\.(makedirs|replace|rename|remove|listdir|walk|scandir)\b|"
  r"\bshutil\.|\bglob\."
)


def _statement_spans(source: str):
  """(first line, last line) of every statement, innermost last, so a line maps to its own statement."""
  spans = [(n.lineno, n.end_lineno) for n in ast.walk(ast.parse(source)) if isinstance(n, ast.stmt)]
  return sorted(spans, key=lambda span: span[1] - span[0])


def test_no_workdir_module_touches_files_but_through_the_path_layer():
  """Raw file access is allowed only in statements that say why the path is local (`# local path: ...`
  on one of the statement's lines, or on the comment lines right above it)."""
  offenders = []
  for module in WORKDIR_MODULES:
    source = open(os.path.join(helpers.ROOT, module), encoding="utf-8").read()
    lines, spans = source.splitlines(), _statement_spans(source)
    for number, line in enumerate(lines, 1):
      if not RAW_FILE_ACCESS.search(line.split("#", 1)[0]):
        continue
      first, last = next(((a, b) for a, b in spans if a <= number <= b), (number, number))
      while first > 1 and lines[first - 2].strip().startswith("#"):
        first -= 1
      if not any("# local path" in lines[i - 1] for i in range(first, last + 1)):
        offenders.append(f"{module}:{number}: {line.strip()}")
  assert not offenders, "\n".join(offenders)


def test_paths_as_users_type_them(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert storage.resolve("runs/x") == str(tmp_path / "runs" / "x")
  assert storage.resolve("~/x") == os.path.expanduser("~/x")
  assert storage.resolve("gs://bucket/run/") == "gs://bucket/run"
  assert storage.join("gs://bucket/run", "checkpoints", 3) == "gs://bucket/run/checkpoints/3"
  assert storage.basename("gs://bucket/run/") == "run"
  with pytest.raises(ConfigError, match="no filesystem for nosuch://"):
    storage.resolve("nosuch://bucket/run")


def test_files_are_replaced_whole_and_found_below_a_folder(tmp_path):
  storage.write_json(tmp_path / "a" / "b" / "r.json", {"x": 1})
  storage.write_text(tmp_path / "a" / "c.json", "{}")
  storage.write_text(tmp_path / "a" / "c.json", '{"y": 2}')
  assert storage.read_json(tmp_path / "a" / "c.json") == {"y": 2}
  assert sorted(os.listdir(tmp_path / "a")) == ["b", "c.json"]  # no temporary file left beside it
  assert storage.find_files(tmp_path / "a", ".json") == [
    str(tmp_path / "a/b/r.json"),
    str(tmp_path / "a/c.json"),
  ]
  assert storage.find_files(tmp_path / "missing", ".json") == []
  (tmp_path / "file").write_text("")
  with pytest.raises(ConfigError, match="is a file"):
    storage.check_writable_dir(tmp_path / "file")
