r"""Write the embedded data as webdataset tar shards of JPEGs, to try the streaming path on real decoding:

  python -m vlm_jax.tools.write_shards --output /tmp/shapes_shards [--count 10000 --per_shard 1000 --image_size 256]

The shards hold KEY.jpg, KEY.txt (the caption) and KEY.json (the labels); the data's SentencePiece model is
copied next to them (give it as data.tokenizer_path). (A module of its own: running synthetic.py as a
script would register its TFDS builder twice.)
"""

import argparse

from vlm_jax.data import synthetic
from vlm_jax.flag_spelling import normalise_argv


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", required=True)
  parser.add_argument("--count", type=int, default=10_000)
  parser.add_argument("--per_shard", type=int, default=1000)
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(normalise_argv())
  synthetic.write_shards(
    args.output, args.count, per_shard=args.per_shard, image_size=args.image_size, seed=args.seed
  )


if __name__ == "__main__":
  main()
