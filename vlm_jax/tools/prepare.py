r"""Convert image-text data into ArrayRecord files for fast random access (`data.name=prepared`).

  python -m vlm_jax.tools.prepare --kind table --input data/cc3m.csv --output data/cc3m_prepared \
      [--image_key filepath --caption_key title] [--test_fraction 0.01]
  python -m vlm_jax.tools.prepare --kind shards --input '/data/laion/{00000..00099}.tar' --output data/laion100
  python -m vlm_jax.tools.prepare --kind folder --input data/imagenette/train --output data/imagenette \
      [--classnames names.txt]

Writes OUTPUT/train.array_record, OUTPUT/test.array_record (a --test_fraction of the samples, chosen by
a hash of their key, so the split does not depend on the order) and OUTPUT/info.json (counts, skipped
samples by reason, bytes, class names). Every image is decoded once here, so a training run reads only
good samples; the bytes are stored as they were (or re-encoded as JPEG no larger than --max_size).
"""

import io
import os
import sys
import time

from vlm_jax import storage
from vlm_jax.data import sources
from vlm_jax.errors import ConfigError
from vlm_jax.flag_spelling import normalise_argv

KINDS = ("table", "folder", "shards")


def _samples(kind: str, spec: str, image_key: str, caption_key: str, classnames: str):
  """(iterator of raw samples, class names or None, total count or None)."""
  if kind == "table":
    rows = sources.read_table(spec, image_key, caption_key)

    def load(rows):
      for row in rows:
        try:
          with sources.open_file(row["image"]) as f:
            yield {**row, "image": f.read()}
        except (OSError, FileNotFoundError):
          sources.SKIPS.add(sources.SampleError("missing_image", row["key"], row["image"]))

    return load(rows), None, len(rows)
  if kind == "folder":
    rows, names = sources.read_folder(spec, classnames)

    def load_folder(rows):
      for row in rows:
        yield {**row, "image": storage.read_bytes(row["image"]), "caption": None}

    return load_folder(rows), names, len(rows)
  if kind == "shards":
    urls = sources.resolve(spec)
    sources.check_exist(urls, "shard")
    return (s for url in urls for s in sources.read_tar(url)), None, None
  raise ConfigError(f"unknown --kind {kind!r}; known: {', '.join(KINDS)}")


def prepare(
  kind: str,
  spec: str,
  output: str,
  *,
  image_key: str = "filepath",
  caption_key: str = "title",
  classnames: str = "",
  test_fraction: float = 0.01,
  max_size: int = 0,
  log=print,
) -> dict:
  """Writes the prepared dataset; returns its info (also OUTPUT/info.json)."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel

  if storage.is_remote(output):  # ArrayRecord writes (and reads) local files
    raise ConfigError(
      f"--output {output}: prepared data is written to local disk; prepare it there and copy it"
    )
  samples, names, total = _samples(kind, spec, image_key, caption_key, classnames)
  storage.check_writable_dir(output, "--output")
  writers = {
    split: ArrayRecordWriter(
      os.path.join(output, f"{split}.array_record"), "group_size:1"
    )  # local path
    for split in ("train", "test")
  }
  counts, size, start = {"train": 0, "test": 0}, 0, time.time()
  sources.SKIPS.reset()
  needs_caption = kind != "folder"
  try:
    for i, sample in enumerate(samples):
      try:
        image = sources.decode_image(sample["image"], sample["key"])
        caption = (
          sources.clean_caption(sample.get("caption"), sample["key"]) if needs_caption else None
        )
      except sources.SampleError as e:
        sources.SKIPS.add(e)
        continue
      data = sample["image"]
      if max_size and max(image.size) > max_size:
        image.thumbnail((max_size, max_size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        data = buffer.getvalue()
      record = {"key": sample["key"], "image": data}
      if caption is not None:
        record["caption"] = caption
      if "label" in sample:
        record["label"] = sample["label"]
      split = "test" if sources.in_test_split(sample["key"], test_fraction) else "train"
      encoded = sources.encode_record(record)
      writers[split].write(encoded)
      counts[split] += 1
      size += len(encoded)
      if (i + 1) % 1000 == 0 or (total and i + 1 == total):
        skipped = sum(sources.SKIPS.snapshot().values())
        progress = f"{i + 1}/{total}" if total else f"{i + 1}"
        print(
          f"\r{progress} samples: {counts['train'] + counts['test']} written, {skipped} skipped, "
          f"{size / 2**20:.1f} MiB, {(i + 1) / max(time.time() - start, 1e-9):.0f}/s",
          end="",
          file=sys.stderr,
        )
  finally:
    for writer in writers.values():
      writer.close()
  print(file=sys.stderr)
  info = {
    "kind": kind,
    "source": spec,
    "written": counts,
    "skipped": sources.SKIPS.snapshot(),
    "bytes": size,
    "class_names": names,
    "seconds": round(time.time() - start, 1),
  }
  storage.write_json(storage.join(output, "info.json"), info)
  log(
    f"Wrote {counts['train']} train + {counts['test']} test samples ({size / 2**20:.1f} MiB) to {output}; "
    f"skipped {sum(info['skipped'].values())} ({', '.join(f'{k}: {v}' for k, v in info['skipped'].items()) or 'none'})"
  )
  return info


def main(argv=None):
  import argparse  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--kind", choices=KINDS, required=True)
  parser.add_argument(
    "--input", required=True, help="table file, image folder, or shard pattern(s)"
  )
  parser.add_argument("--output", required=True)
  parser.add_argument("--image_key", default="filepath")
  parser.add_argument("--caption_key", default="title")
  parser.add_argument("--classnames", default="")
  parser.add_argument("--test_fraction", type=float, default=0.01)
  parser.add_argument("--max_size", type=int, default=0)
  args = parser.parse_args(normalise_argv(argv))
  try:
    prepare(
      args.kind,
      args.input,
      args.output,
      image_key=args.image_key,
      caption_key=args.caption_key,
      classnames=args.classnames,
      test_fraction=args.test_fraction,
      max_size=args.max_size,
    )
  except ConfigError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
