r"""Convert a public checkpoint into a vlm_jax workdir.

python -m vlm_jax.convert --from hf_clip --input /models/clip-vit-base-patch32 --output runs/clip_b32_openai
python -m vlm_jax.convert --from hf_siglip --input /models/siglip-base-patch16-224 --output runs/siglip_b16
python -m vlm_jax.convert --from big_vision_siglip --input webli_en_b16_224_63724782.npz --tokenizer c4_en.model \
    --output runs/siglip_b16_bv
python -m vlm_jax.convert --from openclip --input ViT-B-32.pt --output runs/openai_b32 [--act gelu]
python -m vlm_jax.convert --from openclip --input coca_ViT-B-32.bin --output runs/coca_b32 --act gelu
python -m vlm_jax.convert --from hf_vilt --input /models/vilt-b32-mlm --output runs/vilt_b32_mlm
python -m vlm_jax.convert --from hf_flava --input /models/flava-full --output runs/flava_full
"""

from absl import app, flags, logging

from vlm_jax.cli import fail

flags.DEFINE_enum(
  "from",
  None,
  ["hf_clip", "hf_siglip", "big_vision_siglip", "openclip", "hf_vilt", "hf_flava"],
  "Checkpoint kind.",
)
flags.DEFINE_string(
  "input",
  None,
  "HF model folder, an OpenAI/open_clip .pt/.bin/.safetensors file, or a big_vision .npz (or gs://).",
)
flags.DEFINE_string("output", None, "The workdir to write (config.json, checkpoints/, tokenizer/).")
flags.DEFINE_string(
  "tokenizer",
  "",
  "The vocabulary file, if not next to the checkpoint (e.g. "
  "bpe_simple_vocab_16e6.txt.gz for openclip, which open_clip ships).",
)
flags.DEFINE_enum(
  "act", "quick_gelu", ["quick_gelu", "gelu"], "openclip: the MLP activation (OpenAI: quick_gelu)."
)
flags.DEFINE_integer(
  "image_heads", 0, "openclip: attention heads of the image tower (default: width / 64)."
)
flags.DEFINE_integer(
  "text_heads", 0, "openclip: attention heads of the text tower (default: width / 64)."
)
flags.DEFINE_integer(
  "pool_heads", 0, "openclip CoCa: attention heads of the image pooler (default: embed_dim / 64)."
)
flags.DEFINE_integer(
  "decoder_heads",
  0,
  "openclip CoCa: attention heads of the multimodal decoder (default: width / 64).",
)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not (FLAGS["from"].value and FLAGS.input and FLAGS.output):
    fail("--from, --input and --output are required")
  from vlm_jax import convert  # pylint: disable=import-outside-toplevel
  from vlm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel

  kind = FLAGS["from"].value
  options = (
    dict(
      act=FLAGS.act,
      image_heads=FLAGS.image_heads,
      text_heads=FLAGS.text_heads,
      pool_heads=FLAGS.pool_heads,
      decoder_heads=FLAGS.decoder_heads,
    )
    if kind == "openclip"
    else {}
  )
  try:
    convert.convert(kind, FLAGS.input, FLAGS.output, tokenizer_path=FLAGS.tokenizer, **options)
  except ConfigError as e:
    fail(str(e))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
