"""Small random-weight models in the formats users convert from (HF folders, OpenAI state dicts), built with
transformers on PyTorch: the references of the import tests, and the input folders of the README's convert
commands in the README test."""

import os

import torch
import transformers

from tests.test_tokenizers import train_siglip_spm, write_clip_vocab, write_wordpiece_vocab

# The shape of tests.helpers.MICRO, so that a converted model can seed a LiT run of the micro config.
TOWER = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)


def make_hf_clip(folder):
  """A random-weight HF CLIPModel with its tokenizer files, saved as safetensors."""
  os.makedirs(folder, exist_ok=True)
  _, tok = write_clip_vocab(folder)
  config = transformers.CLIPConfig(
    text_config=dict(
      vocab_size=tok.vocab_size,
      max_position_embeddings=16,
      bos_token_id=tok.bos_id,
      eos_token_id=tok.eos_id,
      pad_token_id=0,
      **TOWER,
    ),
    vision_config=dict(image_size=32, patch_size=8, **TOWER),
    projection_dim=32,
  )
  torch.manual_seed(0)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():  # a logit scale that is not the default, to see that it is read
    model.logit_scale.fill_(3.0)
  model.save_pretrained(folder)
  return model


def make_hf_siglip(folder):
  os.makedirs(folder, exist_ok=True)
  path = train_siglip_spm(os.path.join(folder, "spiece"))
  os.rename(path, os.path.join(folder, "spiece.model"))
  import sentencepiece

  vocab = sentencepiece.SentencePieceProcessor(
    model_file=os.path.join(folder, "spiece.model")
  ).get_piece_size()
  config = transformers.SiglipConfig(
    text_config=dict(vocab_size=vocab, max_position_embeddings=16, projection_size=64, **TOWER),
    vision_config=dict(image_size=32, patch_size=8, **TOWER),
  )
  torch.manual_seed(1)
  model = transformers.SiglipModel(config).eval()
  model.save_pretrained(folder)
  return model


def make_hf_vilt(folder):
  """A random HF ViltForMaskedLM with a small BERT vocabulary."""
  os.makedirs(folder, exist_ok=True)
  write_wordpiece_vocab(str(folder))
  vocab = sum(1 for _ in open(os.path.join(folder, "vocab.txt"), encoding="utf-8"))
  config = transformers.ViltConfig(
    vocab_size=vocab,
    image_size=32,
    patch_size=8,
    max_position_embeddings=16,
    max_image_length=-1,
    **TOWER,
  )
  torch.manual_seed(2)
  model = transformers.ViltForMaskedLM(config).eval()
  model.save_pretrained(folder)
  return model


def make_hf_flava(folder):
  """A random HF FlavaForPreTraining, every parameter drawn at std 0.3 (HF starts heads, LayerNorms and some
  embeddings at 0 / 1 / 0.02: this makes every one count in a parity check)."""
  os.makedirs(folder, exist_ok=True)
  write_wordpiece_vocab(str(folder))
  vocab = sum(1 for _ in open(os.path.join(folder, "vocab.txt"), encoding="utf-8"))
  config = transformers.FlavaConfig(
    image_config=dict(image_size=32, patch_size=8, vocab_size=48, **TOWER),
    text_config=dict(vocab_size=vocab, max_position_embeddings=16, **TOWER),
    multimodal_config={**TOWER, "num_hidden_layers": 1},
    hidden_size=64,
    projection_dim=32,
    init_codebook=True,
    image_codebook_config=dict(hidden_size=8, num_blocks_per_group=1, vocab_size=48),
  )
  torch.manual_seed(3)
  model = transformers.FlavaForPreTraining(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  model.save_pretrained(folder)
  return model


def openai_state_dict(model):
  """HF CLIPModel weights rewritten into OpenAI's / open_clip's layout (fused qkv, c_fc/c_proj, x @ proj)."""
  hf = {k: v.detach().clone() for k, v in model.state_dict().items()}
  out = {
    "logit_scale": hf["logit_scale"],
    "visual.proj": hf["visual_projection.weight"].T.contiguous(),
    "text_projection": hf["text_projection.weight"].T.contiguous(),
  }
  v, t = "vision_model.", "text_model."
  out.update(
    {
      "visual.conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
      "visual.class_embedding": hf[v + "embeddings.class_embedding"],
      "visual.positional_embedding": hf[v + "embeddings.position_embedding.weight"],
      "token_embedding.weight": hf[t + "embeddings.token_embedding.weight"],
      "positional_embedding": hf[t + "embeddings.position_embedding.weight"],
    }
  )
  for ours, theirs in (
    ("visual.ln_pre", v + "pre_layrnorm"),
    ("visual.ln_post", v + "post_layernorm"),
    ("ln_final", t + "final_layer_norm"),
  ):
    out[ours + ".weight"], out[ours + ".bias"] = hf[theirs + ".weight"], hf[theirs + ".bias"]
  for prefix, source in (("visual.transformer.resblocks.", v), ("transformer.resblocks.", t)):
    for i in range(TOWER["num_hidden_layers"]):
      s, d = f"{source}encoder.layers.{i}.", f"{prefix}{i}."
      for kind in ("weight", "bias"):
        out[d + f"attn.in_proj_{kind}"] = torch.cat(
          [hf[s + f"self_attn.{n}_proj.{kind}"] for n in "qkv"]
        )
        out[d + f"attn.out_proj.{kind}"] = hf[s + f"self_attn.out_proj.{kind}"]
        out[d + f"ln_1.{kind}"], out[d + f"ln_2.{kind}"] = (
          hf[s + f"layer_norm1.{kind}"],
          hf[s + f"layer_norm2.{kind}"],
        )
        out[d + f"mlp.c_fc.{kind}"], out[d + f"mlp.c_proj.{kind}"] = (
          hf[s + f"mlp.fc1.{kind}"],
          hf[s + f"mlp.fc2.{kind}"],
        )
  return out
