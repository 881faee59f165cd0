"""One path layer for every workdir and data file: local paths and bucket URLs (`gs://`, `s3://`) alike.

Everything a run writes or reads back (config.json, metrics, TensorBoard events, checkpoints, eval records,
sweep.json, stage markers, converted models, codebooks, prepared data) goes through here, on etils `epath`
(which orbax uses too; gcsfs serves `gs://` when TensorFlow is absent), so that a bucket run is whole in its
bucket and readable from any machine.

Paths enter as strings typed by users: `resolve` makes a local one absolute once, where it enters (orbax's
metadata of a relative path is empty), and checks that a URL's filesystem package is installed.
"""

import json
import os
import posixpath
import uuid

from etils import epath

from vlm_jax.errors import ConfigError

_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs"}


def _no_listing_caches():
  """Buckets are shared: another process (a trainer, another host) adds checkpoints and records while this
  one reads. fsspec caches folder listings per filesystem instance, which would hide them; every listing
  here asks the bucket."""
  import fsspec.config  # pylint: disable=import-outside-toplevel

  for scheme in ("gs", "gcs", "s3", "az"):
    fsspec.config.conf.setdefault(scheme, {}).setdefault("use_listings_cache", False)


_no_listing_caches()


def is_remote(path) -> bool:
  return "://" in str(path)


def check_filesystem(url: str):
  """A one-line error when the package that serves `url`'s scheme is missing."""
  scheme = str(url).split("://", 1)[0]
  import fsspec  # pylint: disable=import-outside-toplevel

  try:
    fsspec.get_filesystem_class(scheme)
  except (ImportError, ValueError) as e:
    package = _PACKAGES.get(scheme)
    fix = (
      f"pip install {package}" + (" (or: pip install 'vlm_jax[gcs]')" if scheme == "gs" else "")
      if package
      else "use a local path or gs://"
    )
    raise ConfigError(
      f"cannot use {url}: no filesystem for {scheme}:// is installed ({fix})"
    ) from e


def resolve(path) -> str:
  """A user's path as the string every later call uses: local ones absolute (~ expanded), URLs checked."""
  path = str(path)
  if is_remote(path):
    check_filesystem(path)
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def join(base, *parts) -> str:
  return (
    posixpath.join(str(base), *map(str, parts))
    if is_remote(base)
    else os.path.join(str(base), *map(str, parts))
  )


def basename(path) -> str:
  return posixpath.basename(str(path).rstrip("/"))


def path(p) -> epath.Path:
  return epath.Path(str(p))


def exists(p) -> bool:
  return path(p).exists()


def isdir(p) -> bool:
  return path(p).is_dir()


def makedirs(p):
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p) -> list:
  """Names in a folder (sorted; [] when it does not exist)."""
  folder = path(p)
  return sorted(child.name for child in folder.iterdir()) if folder.is_dir() else []


def read_text(p) -> str:
  return path(p).read_text()


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def read_json(p):
  return json.loads(read_text(p))


def write_bytes(p, data: bytes):
  """Atomic: readers see the old file or the new one. A bucket object is replaced whole by one upload; a
  local file is written beside and renamed."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(p):
    target.write_bytes(data)
    return
  tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
  tmp.write_bytes(data)
  os.replace(tmp, target)


def write_text(p, text: str):
  write_bytes(p, text.encode())


def write_json(p, obj, **kwargs):
  write_text(p, json.dumps(obj, **{"indent": 2, **kwargs}))


def copy(src, dst):
  write_bytes(dst, read_bytes(src))


def move_tree(src, dst):
  """Renames a folder (a bucket has no rename: its objects are copied on the server, then deleted)."""
  if is_remote(src):
    import fsspec  # pylint: disable=import-outside-toplevel

    fs, source = fsspec.core.url_to_fs(str(src))
    fs.mv(source, fsspec.core.url_to_fs(str(dst))[1], recursive=True)
  else:
    os.replace(src, dst)


def remove(p):
  target = path(p)
  if target.exists():
    target.unlink()


def find_files(root, name_suffix: str) -> list:
  """Every file below `root` whose name ends with `name_suffix`, sorted (epath has no recursive glob)."""
  found, folders = [], [path(root)] if path(root).is_dir() else []
  while folders:
    for child in folders.pop().iterdir():
      if child.is_dir():
        folders.append(child)
      elif child.name.endswith(name_suffix):
        found.append(str(child))
  return sorted(found)


def check_writable_dir(p, what: str = "workdir"):
  """Fails in one line when `p` is a file, or a folder that cannot be created or written."""
  target = path(p)
  if target.exists() and not target.is_dir():
    raise ConfigError(f"{what} {p} is a file; give a folder (it is created if missing)")
  probe = target / f".write_test.{uuid.uuid4().hex}"
  try:
    target.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ConfigError(
      f"cannot write to {what} {p}: {e.strerror or e}; choose a folder you can write to"
    ) from None
