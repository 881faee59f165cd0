"""HF transformers `CLIPModel` and `SiglipModel` folders (config.json + model.safetensors) -> vlm_jax."""

import json
import os

import numpy as np

from vlm_jax.convert import torch_layout as tl
from vlm_jax.errors import ConfigError
from vlm_jax.models import text as text_lib

ACTIVATIONS = {
  "quick_gelu": "quick_gelu",
  "gelu": "gelu",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_new": "gelu_tanh",
  "relu": "relu",
}


def read_folder(path: str):
  """(HF config dict, state dict) of a saved HF model folder."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise ConfigError(f"{path!r} is not an HF model folder: it has no config.json")
  with open(config_path) as f:
    config = json.load(f)
  for name in ("model.safetensors", "pytorch_model.bin"):
    if os.path.exists(os.path.join(path, name)):
      return config, tl.read_state_dict(os.path.join(path, name))
  if any(
    os.path.exists(os.path.join(path, f"{n}.index.json"))
    for n in ("model.safetensors", "pytorch_model.bin")
  ):
    raise ConfigError(
      f"{path!r} holds a sharded checkpoint, which is not read yet; save it unsharded "
      "(model.save_pretrained(folder, max_shard_size='100GB'))"
    )
  raise ConfigError(f"{path!r} has no model.safetensors or pytorch_model.bin")


def _activation(name):
  if name not in ACTIVATIONS:
    raise ConfigError(f"unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def _blocks(state, prefix, depth, heads):
  blocks = {}
  for i in range(depth):
    p = f"{prefix}.layers.{i}."
    g = lambda name: state[p + name]  # noqa: B023  (called within this iteration)
    blocks[f"block_{i}"] = {
      "ln_1": tl.layer_norm(g("layer_norm1.weight"), g("layer_norm1.bias")),
      "attn": tl.attention(
        *[
          (g(f"self_attn.{n}_proj.weight"), g(f"self_attn.{n}_proj.bias"))
          for n in ("q", "k", "v", "out")
        ],
        heads,
      ),
      "ln_2": tl.layer_norm(g("layer_norm2.weight"), g("layer_norm2.bias")),
      "mlp": {
        "fc1": tl.dense(g("mlp.fc1.weight"), g("mlp.fc1.bias")),
        "fc2": tl.dense(g("mlp.fc2.weight"), g("mlp.fc2.bias")),
      },
    }
  return blocks


def _vit_layers(state, prefix, depth, heads):
  """HF ViT/BERT-style pre-LN layers (ViLT, FLAVA): `{prefix}{i}.attention.attention.query...` -> Encoder."""
  blocks = {}
  for i in range(depth):
    b = lambda name: state[f"{prefix}{i}.{name}"]  # noqa: B023  (called within this iteration)
    qkv = [
      (
        b(f"attention.attention.{n}.weight"),
        b(f"attention.attention.{n}.bias")
        if f"{prefix}{i}.attention.attention.{n}.bias" in state
        else np.zeros(b(f"attention.attention.{n}.weight").shape[0], np.float32),
      )  # qkv_bias=False
      for n in ("query", "key", "value")
    ]
    blocks[f"block_{i}"] = {
      "ln_1": tl.layer_norm(b("layernorm_before.weight"), b("layernorm_before.bias")),
      "attn": tl.attention(
        *qkv, (b("attention.output.dense.weight"), b("attention.output.dense.bias")), heads
      ),
      "ln_2": tl.layer_norm(b("layernorm_after.weight"), b("layernorm_after.bias")),
      "mlp": {
        "fc1": tl.dense(b("intermediate.dense.weight"), b("intermediate.dense.bias")),
        "fc2": tl.dense(b("output.dense.weight"), b("output.dense.bias")),
      },
    }
  return blocks


def _text(state, tc, prefix="text_model"):
  vocab = tc["vocab_size"]
  emb = state[f"{prefix}.embeddings.token_embedding.weight"]
  params = {
    "token_embed": {"embedding": tl.pad_rows(emb, text_lib.pad_vocab(vocab))},
    "pos_embed": state[f"{prefix}.embeddings.position_embedding.weight"],
    "encoder": _blocks(
      state, f"{prefix}.encoder", tc["num_hidden_layers"], tc["num_attention_heads"]
    ),
    "ln_final": tl.layer_norm(
      state[f"{prefix}.final_layer_norm.weight"], state[f"{prefix}.final_layer_norm.bias"]
    ),
  }
  fields = dict(
    variant="B",
    vocab_size=vocab,
    width=tc["hidden_size"],
    depth=tc["num_hidden_layers"],
    num_heads=tc["num_attention_heads"],
    mlp_dim=tc["intermediate_size"],
    max_len=tc["max_position_embeddings"],
    act=_activation(tc.get("hidden_act", "quick_gelu")),
    ln_eps=tc.get("layer_norm_eps", 1e-5),
  )
  return fields, params


def _vision(state, vc, prefix="vision_model"):
  p = f"{prefix}.embeddings."
  params = {
    "patch_embed": {"kernel": tl.patch_kernel(state[p + "patch_embedding.weight"])},
    "pos_embed": state[p + "position_embedding.weight"],
    "encoder": _blocks(
      state, f"{prefix}.encoder", vc["num_hidden_layers"], vc["num_attention_heads"]
    ),
    "ln_post": tl.layer_norm(
      state[f"{prefix}.post_layernorm.weight"], state[f"{prefix}.post_layernorm.bias"]
    ),
  }
  patch = vc["patch_size"]
  fields = dict(
    variant=f"B/{patch}",
    width=vc["hidden_size"],
    depth=vc["num_hidden_layers"],
    num_heads=vc["num_attention_heads"],
    mlp_dim=vc["intermediate_size"],
    patch_size=patch,
    image_size=vc["image_size"],
    act=_activation(vc.get("hidden_act", "quick_gelu")),
    ln_eps=vc.get("layer_norm_eps", 1e-5),
  )
  return fields, params


def _check_kind(config, expected):
  kind = config.get("model_type")
  if kind != expected:
    raise ConfigError(
      f"the HF folder holds a {kind!r} model, not {expected!r}; pass the matching --from"
    )


def convert_clip(path: str):
  """-> (model config dict, params, objective name, tokenizer (name, file names), normalisation)."""
  config, state = read_folder(path)
  _check_kind(config, "clip")
  tc, vc = config["text_config"], config["vision_config"]
  image, image_params = _vision(state, vc)
  image_params["cls_token"] = state["vision_model.embeddings.class_embedding"]
  image_params["ln_pre"] = tl.layer_norm(
    state["vision_model.pre_layrnorm.weight"], state["vision_model.pre_layrnorm.bias"]
  )
  text, text_params = _text(state, tc)
  # HF pools at the first eos token, except for legacy configs (eos_token_id 2) which pool at the highest id:
  # CLIP's end-of-text token is the last one of its vocabulary.
  eos = tc.get("eos_token_id", 2)
  text.update(causal=True, pool="eot", pad_id=-1, eos_id=tc["vocab_size"] - 1 if eos == 2 else eos)
  image.update(pool="cls")
  params = {
    "image_encoder": image_params,
    "text_encoder": text_params,
    "image_proj": {"kernel": state["visual_projection.weight"].T},
    "text_proj": {"kernel": state["text_projection.weight"].T},
    "logit_scale": np.float32(state["logit_scale"].reshape(())),
  }
  model = dict(name="clip", embed_dim=config.get("projection_dim", 512), image=image, text=text)
  state.check_all_used()
  return model, params, "clip", ("clip_bpe", ("vocab.json", "merges.txt"))


def convert_siglip(path: str):
  config, state = read_folder(path)
  return siglip_from_state(config, state)


def siglip_from_state(config: dict, state):
  """An HF-layout SigLIP (its config dict and state) -> (model config dict, params, objective,
  tokenizer); big_vision's checkpoints arrive here renamed (`convert/big_vision.py`)."""
  _check_kind(config, "siglip")
  tc, vc = config["text_config"], config["vision_config"]
  image, image_params = _vision(state, vc)
  image_params["patch_embed"]["bias"] = state["vision_model.embeddings.patch_embedding.bias"]
  h = "vision_model.head."
  image_params["map_head"] = {
    "probe": state[h + "probe"].reshape(1, -1),
    "attn": tl.fused_attention(
      state[h + "attention.in_proj_weight"],
      state[h + "attention.in_proj_bias"],
      state[h + "attention.out_proj.weight"],
      state[h + "attention.out_proj.bias"],
      vc["num_attention_heads"],
    ),
    "ln": tl.layer_norm(state[h + "layernorm.weight"], state[h + "layernorm.bias"]),
    "mlp": {
      "fc1": tl.dense(state[h + "mlp.fc1.weight"], state[h + "mlp.fc1.bias"]),
      "fc2": tl.dense(state[h + "mlp.fc2.weight"], state[h + "mlp.fc2.bias"]),
    },
  }
  image.update(pool="map", ln_pre=False, patch_bias=True)
  text, text_params = _text(state, tc)
  text.update(causal=False, pool="last", pad_id=-1)
  params = {
    "image_encoder": image_params,
    "text_encoder": text_params,
    "text_proj": tl.dense(state["text_model.head.weight"], state["text_model.head.bias"]),
    "logit_scale": np.float32(state["logit_scale"].reshape(())),
    "logit_bias": np.float32(state["logit_bias"].reshape(())),
  }
  embed_dim = state["text_model.head.weight"].shape[0]
  state.check_all_used()
  if embed_dim != vc["hidden_size"]:
    raise ConfigError(
      f"SigLIP text head width {embed_dim} differs from the vision width {vc['hidden_size']}"
    )
  model = dict(
    name="siglip",
    embed_dim=embed_dim,
    image=image,
    text=text,
    image_head="none",
    text_head_bias=True,
    logit_bias_init=float(params["logit_bias"]),
    logit_scale_max=float(np.log(1e4)),
  )
  return model, params, "sigmoid", ("siglip", ("spiece.model",))


def convert_vilt(path: str):
  """HF `ViltModel` / `ViltForMaskedLM` / `ViltForImageAndTextRetrieval` -> the `vilt` model.

  BERT's text token-type embedding (always type 0 in ViLT) is folded into the text position embeddings:
  both are added before the same LayerNorm. Heads the checkpoint lacks start at zero (an ITM head at zero
  scores every pair 0.5) and the log says so. Patch sampling (`max_image_length`) is a training-time
  augmentation of HF's implementation; the imported model sees every patch.
  """
  config, state = read_folder(path)
  _check_kind(config, "vilt")
  prefix = "vilt." if any(k.startswith("vilt.") for k in state) else ""
  g = lambda name: state[prefix + name]
  width, heads, depth = (
    config["hidden_size"],
    config["num_attention_heads"],
    config["num_hidden_layers"],
  )
  blocks = _vit_layers(state, prefix + "encoder.layer.", depth, heads)
  vocab = config["vocab_size"]
  padded = text_lib.pad_vocab(vocab)
  t = "embeddings.text_embeddings."
  words = g(t + "word_embeddings.weight")
  params = {
    "text_embed": {"embedding": tl.pad_rows(words, padded)},
    "text_pos_embed": g(t + "position_embeddings.weight")
    + g(t + "token_type_embeddings.weight")[0],
    "text_ln": tl.layer_norm(g(t + "LayerNorm.weight"), g(t + "LayerNorm.bias")),
    "patch_embed": {
      "kernel": tl.patch_kernel(g("embeddings.patch_embeddings.projection.weight")),
      "bias": g("embeddings.patch_embeddings.projection.bias"),
    },
    "image_cls": g("embeddings.cls_token").reshape(-1),
    "image_pos_embed": g("embeddings.position_embeddings")[0],
    "modality_embed": g("embeddings.token_type_embeddings.weight"),
    "encoder": blocks,
    "final_ln": tl.layer_norm(g("layernorm.weight"), g("layernorm.bias")),
  }
  missing = []
  if prefix + "pooler.dense.weight" in state:
    params["pooler"] = tl.dense(g("pooler.dense.weight"), g("pooler.dense.bias"))
  else:
    missing.append("pooler")
    params["pooler"] = {
      "kernel": np.zeros((width, width), np.float32),
      "bias": np.zeros(width, np.float32),
    }
  if (
    "rank_output.weight" in state
  ):  # ViltForImageAndTextRetrieval: one matching logit r == 2-way (0, r)
    r_w, r_b = state["rank_output.weight"], state["rank_output.bias"]
    params["itm_head"] = {
      "kernel": np.concatenate([np.zeros_like(r_w.T), r_w.T], axis=1),
      "bias": np.concatenate([np.zeros_like(r_b), r_b]),
    }
  else:
    missing.append("itm_head")
    params["itm_head"] = {
      "kernel": np.zeros((width, 2), np.float32),
      "bias": np.zeros(2, np.float32),
    }
  if "mlm_score.transform.dense.weight" in state:
    # A tied decoder is usually not saved; when it is, it must equal the word embeddings.
    if "mlm_score.decoder.weight" in state and not np.allclose(
      state["mlm_score.decoder.weight"], words
    ):
      raise ConfigError(
        f"{path}: the MLM decoder is not tied to the word embeddings; vlm_jax's ViLT ties them"
      )
    params["mlm_transform"] = tl.dense(
      state["mlm_score.transform.dense.weight"], state["mlm_score.transform.dense.bias"]
    )
    params["mlm_ln"] = tl.layer_norm(
      state["mlm_score.transform.LayerNorm.weight"], state["mlm_score.transform.LayerNorm.bias"]
    )
    params["mlm_bias"] = np.pad(state["mlm_score.decoder.bias"], (0, padded - vocab))
  else:
    missing.append("mlm head")
    params["mlm_transform"] = {
      "kernel": np.zeros((width, width), np.float32),
      "bias": np.zeros(width, np.float32),
    }
    params["mlm_ln"] = {"scale": np.ones(width, np.float32), "bias": np.zeros(width, np.float32)}
    params["mlm_bias"] = np.zeros(padded, np.float32)
  state.check_all_used()
  patch = config["patch_size"]
  model = dict(
    name="vilt",
    ln_eps=config.get("layer_norm_eps", 1e-12),
    image=dict(
      variant=f"B/{patch}",
      width=width,
      depth=depth,
      num_heads=heads,
      mlp_dim=config["intermediate_size"],
      patch_size=patch,
      image_size=config["image_size"],
      act=_activation(config.get("hidden_act", "gelu")),
    ),
    text=dict(vocab_size=vocab, max_len=config["max_position_embeddings"], pad_id=0),
  )
  return model, params, missing, ("wordpiece", ("vocab.txt",))


def _prediction_head(state, prefix, width, outputs, padded=None):
  """FLAVA's masked-prediction head {transform, ln, decoder}; zeros (and the name, for the log) when the
  checkpoint has none. `padded`: output columns padded with zeros to the model's padded vocabulary."""
  if prefix + "decoder.weight" in state:
    head = {
      "transform": tl.dense(
        state[prefix + "transform.dense.weight"], state[prefix + "transform.dense.bias"]
      ),
      "ln": tl.layer_norm(
        state[prefix + "transform.LayerNorm.weight"], state[prefix + "transform.LayerNorm.bias"]
      ),
      "decoder": tl.dense(state[prefix + "decoder.weight"], state[prefix + "decoder.bias"]),
    }
    if prefix + "bias" in state:  # HF ties `bias` to decoder.bias; a saved copy must agree
      if not np.array_equal(state[prefix + "bias"], head["decoder"]["bias"]):
        raise ConfigError(
          f"{state.source}: {prefix}bias differs from {prefix}decoder.bias, which it is tied to"
        )
    missing = []
  else:
    head = {
      "transform": {
        "kernel": np.zeros((width, width), np.float32),
        "bias": np.zeros(width, np.float32),
      },
      "ln": {"scale": np.ones(width, np.float32), "bias": np.zeros(width, np.float32)},
      "decoder": {
        "kernel": np.zeros((width, outputs), np.float32),
        "bias": np.zeros(outputs, np.float32),
      },
    }
    missing = [prefix.rstrip(".")]
  if padded and padded > head["decoder"]["kernel"].shape[1]:
    extra = padded - head["decoder"]["kernel"].shape[1]
    head["decoder"] = {
      "kernel": np.pad(head["decoder"]["kernel"], ((0, 0), (0, extra))),
      "bias": np.pad(head["decoder"]["bias"], (0, extra)),
    }
  return head, missing


def convert_flava(path: str):
  """HF `FlavaModel` / `FlavaForPreTraining` -> the `flava` model. Returns (model, params, missing heads,
  dropped tensors, tokenizer).

  As in HF, the contrastive embeddings project the encoders' LayerNormed [CLS] tokens and the multimodal
  encoder reads their last layers before that LayerNorm. The text token-type embedding (type 0) is folded
  into the position embeddings (both are added before the embedding LayerNorm). The ITM head's pooler is
  vlm_jax's multimodal pooler; without an ITM head (FlavaModel) the multimodal model's own pooler takes
  its place. Dropped, since no FLAVA output vlm_jax computes reads them: the unimodal poolers (HF's
  contrastive embeddings read [CLS] tokens, not pooler outputs), the multimodal pooler when an ITM head
  exists, and the DALL-E image codebook (MIM targets here are pixels or a k-means codebook; the imported
  MIM heads keep their `image_config.vocab_size` outputs).
  """
  config, state = read_folder(path)
  _check_kind(config, "flava")
  prefix = "flava." if any(k.startswith("flava.") for k in state) else ""
  ic, tc, mc = config["image_config"], config["text_config"], config["multimodal_config"]
  if not mc.get("use_cls_token", True):
    raise ConfigError(
      f"{path}: multimodal_config.use_cls_token=False is not supported (vlm_jax's FLAVA pools a "
      "multimodal [CLS] token)"
    )
  g = lambda name: state[prefix + name]
  lin = lambda name: tl.dense(g(name + ".weight"), g(name + ".bias"))
  ln = lambda name: tl.layer_norm(g(name + ".weight"), g(name + ".bias"))
  e = "image_model.embeddings."
  image_params = {
    "patch_embed": {
      "kernel": tl.patch_kernel(g(e + "patch_embeddings.projection.weight")),
      "bias": g(e + "patch_embeddings.projection.bias"),
    },
    "cls_token": g(e + "cls_token").reshape(-1),
    "mask_token": g(e + "mask_token").reshape(-1),
    "pos_embed": g(e + "position_embeddings")[0],
    "encoder": _vit_layers(
      state,
      prefix + "image_model.encoder.layer.",
      ic["num_hidden_layers"],
      ic["num_attention_heads"],
    ),
    "ln_post": ln("image_model.layernorm"),
  }
  vocab = tc["vocab_size"]
  padded = text_lib.pad_vocab(vocab)
  t = "text_model.embeddings."
  text_params = {
    "token_embed": {"embedding": tl.pad_rows(g(t + "word_embeddings.weight"), padded)},
    "pos_embed": g(t + "position_embeddings.weight") + g(t + "token_type_embeddings.weight")[0],
    "ln_embed": ln(t + "LayerNorm"),
    "encoder": _vit_layers(
      state,
      prefix + "text_model.encoder.layer.",
      tc["num_hidden_layers"],
      tc["num_attention_heads"],
    ),
    "ln_final": ln("text_model.layernorm"),
  }
  mm_width = mc["hidden_size"]
  params = {
    "image_encoder": image_params,
    "text_encoder": text_params,
    "image_proj": lin("image_projection"),
    "text_proj": lin("text_projection"),
    "logit_scale": np.float32(g("logit_scale").reshape(())),
    "image_to_mm": lin("image_to_mm_projection"),
    "text_to_mm": lin("text_to_mm_projection"),
    "mm_cls": g("multimodal_model.cls_token").reshape(-1),
    "mm_encoder": _vit_layers(
      state,
      prefix + "multimodal_model.encoder.layer.",
      mc["num_hidden_layers"],
      mc["num_attention_heads"],
    ),
    "mm_ln": ln("multimodal_model.layernorm"),
  }
  dropped = state.drop(prefix + "image_model.pooler.") + state.drop(prefix + "text_model.pooler.")
  dropped += state.drop("image_codebook.")
  missing = []
  if "itm_head.seq_relationship.weight" in state:
    params["mm_pooler"] = tl.dense(
      state["itm_head.pooler.dense.weight"], state["itm_head.pooler.dense.bias"]
    )
    params["itm_head"] = tl.dense(
      state["itm_head.seq_relationship.weight"], state["itm_head.seq_relationship.bias"]
    )
    dropped += state.drop(prefix + "multimodal_model.pooler.")
  else:
    params["mm_pooler"] = lin("multimodal_model.pooler.dense")
    params["itm_head"] = {
      "kernel": np.zeros((mm_width, 2), np.float32),
      "bias": np.zeros(2, np.float32),
    }
    missing.append("itm_head")
  has_mim = "mim_head.decoder.weight" in state
  mim_out = ic["vocab_size"] if has_mim else ic["patch_size"] ** 2 * 3
  for name, source, width, outputs, pad in (
    ("text_mlm_head", "mlm_head.", tc["hidden_size"], vocab, padded),
    ("image_mim_head", "mim_head.", ic["hidden_size"], mim_out, None),
    ("mm_mlm_head", "mmm_text_head.", mm_width, vocab, padded),
    ("mm_mim_head", "mmm_image_head.", mm_width, mim_out, None),
  ):
    params[name], absent = _prediction_head(state, source, width, outputs, pad)
    missing += absent
  state.check_all_used()
  tower = lambda c: dict(
    width=c["hidden_size"],
    depth=c["num_hidden_layers"],
    num_heads=c["num_attention_heads"],
    mlp_dim=c["intermediate_size"],
    act=_activation(c.get("hidden_act", "gelu")),
    ln_eps=c.get("layer_norm_eps", 1e-12),
  )
  patch = ic["patch_size"]
  model = dict(
    name="flava",
    embed_dim=config.get("projection_dim", 768),
    mim_codes=ic["vocab_size"] if has_mim else 0,
    image=dict(
      variant=f"B/{patch}",
      patch_size=patch,
      image_size=ic["image_size"],
      ln_pre=False,
      patch_bias=True,
      **tower(ic),
    ),
    text=dict(
      variant="L",
      vocab_size=vocab,
      max_len=tc["max_position_embeddings"],
      pad_id=tc.get("pad_token_id", 0),
      embed_ln=True,
      **tower(tc),
    ),
    multimodal=dict(variant="B", **tower(mc)),
  )
  return model, params, missing, dropped, ("wordpiece", ("vocab.txt",))
