r"""Export a run's CLIP, SigLIP, ViLT or FLAVA to a folder transformers (or open_clip) loads as it is.

python -m vlm_jax.export --workdir runs/clip_tiny --to hf_clip --output exported/clip_tiny
python -m vlm_jax.export --workdir runs/siglip_b16 --step 2000 --to hf_siglip --output exported/siglip

python -m vlm_jax.export --workdir runs/clip --to openclip --output exported/clip_openclip
python -m vlm_jax.export --workdir runs/flava --to hf_flava --drop image_mim_head,mm_mim_head \
  --output exported/flava

Then `transformers.CLIPModel.from_pretrained("exported/clip_tiny")` (or SiglipModel) and its processor, or
`open_clip.create_model("local-dir:exported/clip_openclip")`.
"""

from absl import app, flags, logging

from vlm_jax.cli import fail, parse_flags

flags.DEFINE_string("workdir", None, "The run (or converted model) to export.")
flags.DEFINE_integer("step", None, "The checkpoint step (default: the latest).")
flags.DEFINE_enum(
  "to", None, ["hf_clip", "hf_siglip", "openclip", "hf_vilt", "hf_flava"], "The format to write."
)
flags.DEFINE_list(
  "drop",
  [],
  "Parameter groups to leave out, when the target cannot express them (FLAVA's pixel-regression MIM "
  "heads: image_mim_head,mm_mim_head).",
)
flags.DEFINE_string("output", None, "The folder to write (local or gs://).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not (FLAGS.workdir and FLAGS.to and FLAGS.output):
    fail("--workdir, --to and --output are required")
  from vlm_jax.convert import export  # pylint: disable=import-outside-toplevel
  from vlm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel

  try:
    export.export(FLAGS.workdir, FLAGS.to, FLAGS.output, step=FLAGS.step, drop=FLAGS.drop)
  except ConfigError as e:
    fail(str(e))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)
