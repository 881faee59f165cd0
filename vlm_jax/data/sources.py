"""Real image-text data: tables (CSV / TSV / JSONL), image folders, webdataset tar shards, and the
ArrayRecord files `python -m vlm_jax.tools.prepare` writes from any of them.

Paths may be local or URLs that fsspec opens (gs:// needs `pip install gcsfs`); shard lists use brace
ranges, `/data/laion/{00000..09999}.tar`. A missing file or shard fails at start with its name. Bad
samples never stop a run: an undecodable image, an empty or missing caption, a member missing from a
truncated tar are skipped, counted per reason (`SKIPS`, reported as `data/skipped/<reason>` metrics) and
logged once per reason with the sample's key.
"""

import collections
import csv
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import tarfile
import threading
import time

from PIL import Image

from vlm_jax import storage
from vlm_jax.errors import ConfigError, StorageError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
CAPTION_EXTENSIONS = ("txt", "caption")


class SampleError(Exception):
  """A sample that cannot be used; `reason` is its skip counter's name."""

  def __init__(self, reason: str, key: str, detail: str = ""):
    super().__init__(f"{reason}: {key} {detail}".strip())
    self.reason, self.key, self.detail = reason, key, detail

  def __reduce__(self):  # picklable with its fields: grain worker processes hand skips back
    return type(self), (self.reason, self.key, self.detail)


class Skips:
  """Thread-safe counts of skipped samples per reason; the first sample of each reason is logged.

  `once=True` counts an error of a given (reason, key) once however often it is met: a truncated shard
  that a resampled stream reads again and again loses its samples once, not once per read."""

  def __init__(self):
    self._lock, self._counts, self._seen = threading.Lock(), collections.Counter(), set()

  def add(self, error: SampleError, count: int = 1, once: bool = False):
    with self._lock:
      if once:
        if (error.reason, error.key) in self._seen:
          return
        self._seen.add((error.reason, error.key))
      first = error.reason not in self._counts
      self._counts[error.reason] += count
    if first:
      logging.warning("skipping bad samples (first of kind %s): %s", error.reason, error)

  def snapshot(self) -> dict:
    with self._lock:
      return dict(self._counts)

  def reset(self):
    with self._lock:
      self._counts.clear()
      self._seen.clear()


SKIPS = Skips()


# --- paths ---------------------------------------------------------------------------------------------

_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list:
  """'a{00..02}b{x,y}' -> ['a00bx', 'a00by', 'a01bx', ...] (zero padding kept, as in bash / webdataset)."""
  match = _BRACES.search(pattern)
  if not match:
    return [pattern]
  body = match.group(1)
  numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if numbers:
    lo, hi = numbers.groups()
    width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
    options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    options = body.split(",")
  head, tail = pattern[: match.start()], pattern[match.end() :]
  return [out for option in options for out in expand_braces(head + option + tail)]


def _fs(url: str):
  import fsspec  # pylint: disable=import-outside-toplevel

  try:
    return fsspec.core.url_to_fs(url)
  except ImportError as e:
    raise ConfigError(f"cannot open {url}: {e} (for gs:// paths: pip install gcsfs)") from None


def open_file(url: str, mode: str = "rb"):
  fs, path = _fs(url)
  return fs.open(path, mode)


def check_exist(urls, what: str):
  """Fails at start, naming the first missing path."""
  for url in urls:
    fs, path = _fs(url)
    if not fs.exists(path):
      raise ConfigError(f"{what} {url!r} does not exist")


def resolve(spec) -> list:
  """A brace pattern, or a list of them -> the list of paths they name."""
  patterns = [spec] if isinstance(spec, str) else list(spec)
  return [p for pattern in patterns for p in expand_braces(pattern)]


# --- samples -------------------------------------------------------------------------------------------


def decode_image(data, key: str) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    image.load()
    return image.convert("RGB")
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds)
    raise SampleError("undecodable_image", key, f"({type(e).__name__})") from None


def clean_caption(text, key: str) -> str:
  if text is None:
    raise SampleError("missing_caption", key)
  text = (
    text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else str(text)
  ).strip()
  if not text:
    raise SampleError("empty_caption", key)
  return text


def in_test_split(key: str, fraction: float) -> bool:
  """A split by a hash of the sample's key: independent of order, stable as data is added."""
  return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 16**8 < fraction


def read_table(
  path: str, image_key: str = "filepath", caption_key: str = "title", base_dir: str = ""
) -> list:
  """Rows of a CSV (comma), TSV (tab) or JSONL table as {'key', 'image', 'caption'}; relative image paths
  are read relative to `base_dir` (default: the table's folder). open_clip's column names by default."""
  check_exist([path], "table")
  base_dir = base_dir or (
    posixpath.dirname(path) if storage.is_remote(path) else os.path.dirname(path)
  )
  with open_file(path, "rb") as f:
    text = f.read().decode("utf-8")
  if path.endswith(".jsonl"):
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
  else:
    rows = list(
      csv.DictReader(io.StringIO(text), delimiter="\t" if path.endswith((".tsv", ".tab")) else ",")
    )
  if rows and image_key not in rows[0]:
    raise ConfigError(
      f"{path} has no column {image_key!r} (columns: {', '.join(rows[0])}); set data.image_key"
    )
  if rows and caption_key not in rows[0]:
    raise ConfigError(
      f"{path} has no column {caption_key!r} (columns: {', '.join(rows[0])}); set data.caption_key"
    )
  out = []
  for i, row in enumerate(rows):
    image = str(row[image_key])
    if not storage.is_remote(image) and not os.path.isabs(image):
      image = storage.join(base_dir, image)
    out.append(
      {"key": f"{storage.basename(path)}:{i}", "image": image, "caption": row.get(caption_key)}
    )
  return out


def read_folder(root: str, classnames_file: str = "") -> tuple:
  """An image folder with one sub-folder per class -> ([{'key', 'image', 'label'}], class names). Class
  names are the folder names (sorted), or the lines of `classnames_file` ('folder<TAB>name' or one name
  per folder in sorted order)."""
  if not storage.isdir(root):
    raise ConfigError(f"image folder {root!r} does not exist")
  folders = [d for d in storage.listdir(root) if storage.isdir(storage.join(root, d))]
  if not folders:
    raise ConfigError(f"{root} has no class sub-folders")
  names = list(folders)
  if classnames_file:
    lines = [l.rstrip("\r") for l in storage.read_text(classnames_file).split("\n") if l.strip()]
    if all("\t" in l for l in lines):
      mapping = dict(l.split("\t", 1) for l in lines)
      names = [mapping.get(d, d) for d in folders]
    elif len(lines) == len(folders):
      names = lines
    else:
      raise ConfigError(
        f"{classnames_file} has {len(lines)} names for {len(folders)} class folders"
      )
  samples = []
  for label, folder in enumerate(folders):
    for name in storage.listdir(storage.join(root, folder)):
      if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
        samples.append(
          {"key": f"{folder}/{name}", "image": storage.join(root, folder, name), "label": label}
        )
  return samples, names


class _EndCheckingTarInfo(tarfile.TarInfo):
  """Marks a tar stream that ends without its end-of-archive zero blocks: cut exactly at a 512-byte block
  boundary, which tarfile itself takes for a normal end."""

  @classmethod
  def fromtarfile(cls, tar):
    try:
      return super().fromtarfile(tar)
    except tarfile.EmptyHeaderError:
      tar.vlm_jax_cut = True
      raise


class _Truncated(Exception):
  pass


def shard_size(url: str) -> int | None:
  """A shard's sample count when img2dataset's `<shard>_stats.json` ("successes") lies beside it."""
  stats = re.sub(r"\.tar(\.gz)?$", "_stats.json", url)
  try:
    with open_file(stats, "rb") as f:
      return int(json.load(f)["successes"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _tar_groups(url: str):
  """(key, {extension: bytes}) per sample of a tar, in order; raises _Truncated for a cut or corrupt tar
  (the sample being read when it ended is dropped) and OSError for a storage failure."""
  current, members = None, {}
  with open_file(url, "rb") as f:
    try:
      with tarfile.open(fileobj=f, mode="r|*", tarinfo=_EndCheckingTarInfo) as tar:
        for member in tar:
          if not member.isfile():
            continue
          folder, name = posixpath.split(member.name)
          key, _, ext = name.partition(".")
          key = posixpath.join(folder, key)
          if current is not None and key != current:
            yield current, members
            members = {}
          current = key
          members[ext.lower()] = tar.extractfile(member).read()
        cut = getattr(tar, "vlm_jax_cut", False)
    except (tarfile.TarError, EOFError) as e:
      raise _Truncated(f"{type(e).__name__}: {e}") from None
  if cut:
    raise _Truncated("it ends without the end-of-archive blocks (cut at a block boundary)")
  if current is not None:
    yield current, members


def read_tar(url: str, skips: Skips | None = None, *, retries: int = 4, backoff_s: float = 1.0):
  """Samples of a webdataset tar: members grouped by key (the path up to the first dot of the file name),
  as {'key', 'image': bytes, 'caption', 'json'}.

  Samples without an image are skipped and counted in `skips` (default `SKIPS`). A truncated or corrupt
  tar loses its rest: counted as `truncated_tar`, plus `lost_in_truncated_tar` samples when the shard's
  size is known, once per shard however often it is read. A storage error (network, permissions) is
  retried `retries` times with exponential backoff, resuming at the sample it reached, then raised as
  StorageError naming the shard."""
  skips = SKIPS if skips is None else skips
  name = posixpath.basename(url)

  def sample(key, members):
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    caption = next((members[e] for e in CAPTION_EXTENSIONS if e in members), None)
    if image is None:
      raise SampleError("missing_image", f"{name}:{key}")
    meta = json.loads(members["json"]) if "json" in members else {}
    return {"key": f"{name}:{key}", "image": image, "caption": caption, "json": meta}

  done = 0  # samples handed out or skipped so far: a retry resumes after them
  for attempt in range(retries + 1):
    try:
      for index, (key, members) in enumerate(_tar_groups(url)):
        if index < done:
          continue
        done += 1
        try:
          result = sample(key, members)
        except SampleError as e:
          skips.add(e)
          continue
        yield result
      return
    except _Truncated as e:
      expected = shard_size(url)
      lost = None if expected is None else max(expected - done, 0)
      skips.add(
        SampleError(
          "truncated_tar",
          url,
          f"({e}; {done} samples read, "
          + (
            f"{lost} lost)"
            if lost is not None
            else "the number lost is unknown without "
            "the shard's size, e.g. img2dataset's _stats.json)"
          ),
        ),
        once=True,
      )
      if lost:
        skips.add(SampleError("lost_in_truncated_tar", url), count=lost, once=True)
      return
    except OSError as e:
      if attempt == retries:
        raise StorageError(
          f"reading shard {url} failed {retries + 1} times ({type(e).__name__}: {e}); "
          "check that it is readable from this machine"
        ) from None
      wait = backoff_s * 2**attempt
      logging.warning(
        "reading %s failed (%s: %s); retrying in %.0fs", url, type(e).__name__, e, wait
      )
      time.sleep(wait)


# --- prepared ArrayRecord files ----------------------------------------------------------------------


def encode_record(sample: dict) -> bytes:
  """{'key', 'image': encoded bytes, 'caption', 'label', ...} -> one ArrayRecord record: a 4-byte header
  length, a JSON header with everything but the image, then the image's bytes as they were."""
  header = json.dumps({k: v for k, v in sample.items() if k != "image"}).encode()
  return len(header).to_bytes(4, "little") + header + bytes(sample["image"])


def decode_record(data: bytes) -> dict:
  n = int.from_bytes(data[:4], "little")
  return {**json.loads(data[4 : 4 + n]), "image": data[4 + n :]}


class PreparedSource:
  """Random access to a prepared split (`prepare.py`): {'key', 'image': bytes, 'caption', 'label'}."""

  def __init__(self, path: str):
    import grain  # pylint: disable=import-outside-toplevel

    check_exist([path], "prepared split")
    self.path = path
    self._source = grain.sources.ArrayRecordDataSource([path])

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    if not 0 <= i < len(self._source):
      raise IndexError(f"record {i} of {len(self._source)} in {self.path}")
    return decode_record(self._source[i])

  def __iter__(self):
    return (self[i] for i in range(len(self)))
