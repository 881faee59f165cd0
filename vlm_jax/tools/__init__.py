"""Tools run with `python -m vlm_jax.tools.<name>`: the top layer, which may use every other package.

bench (the train step's speed, and open_clip's beside it: open_clip_step), input_bench (the input
pipeline's speed), prepare (image folders and tables to ArrayRecord), write_shards (the embedded data as
webdataset shards), codebook (a k-means patch codebook for FLAVA's masked image modeling).
"""
