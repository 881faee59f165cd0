"""Importing public pretrained weights: HF `CLIPModel` / `SiglipModel` folders and OpenAI / open_clip
CLIP state dicts.

  python -m vlm_jax.convert --from hf_clip|hf_siglip|openclip --input PATH --output WORKDIR

writes WORKDIR/config.json (the matching vlm_jax config), WORKDIR/checkpoints/0 (the parameters) and
WORKDIR/tokenizer/ (the model's vocabulary, when found). WORKDIR then works wherever a run's workdir does:
`vlm_jax.load(WORKDIR)`, `main --mode=eval --workdir WORKDIR`, and `--config.init_from.workdir=WORKDIR`.
"""

import importlib.util
import os

import jax
import ml_collections
import numpy as np

from vlm_jax import (
  builtins,  # noqa: F401  pylint: disable=unused-import  (registers the built-ins)
  config_utils,
  defaults,
  models,
  storage,
)
from vlm_jax.convert import big_vision, hf, openclip
from vlm_jax.core import checkpoint
from vlm_jax.errors import ConfigError

KINDS = ("hf_clip", "hf_siglip", "big_vision_siglip", "openclip", "hf_vilt", "hf_flava")
FUSION_OBJECTIVES = {
  "mlm": dict(weight=1.0, rate=0.15, whole_word=True),
  "itm": dict(weight=1.0, negative_rate=0.5, negatives="mixed", hard_fraction=0.5),
}
FUSION_EVALS = {
  "itm_retrieval": dict(every="1 epochs", limit=100),
  "mlm_accuracy": dict(every="1 epochs", limit=500),
}
# FLAVA keeps its contrastive head: zero-shot and retrieval, ITM re-ranking the contrastive top 16, and MLM
# on its text encoder. MIM / MMM need a codebook that matches the imported heads, so they are left to the user.
FLAVA_OBJECTIVES = {
  "clip": dict(weight=1.0, impl="global"),
  "mlm": dict(weight=1.0, rate=0.15, whole_word=True, method="text_mlm_logits"),
  "itm": dict(weight=1.0, negative_rate=0.5, negatives="hard"),
}
FLAVA_EVALS = {
  **defaults.base_config().evals.to_dict(),
  "itm_retrieval": dict(every="1 epochs", limit=1000, rerank_k=16),
  "mlm_accuracy": dict(every="1 epochs", limit=500, method="text_mlm_logits"),
}


def _find_tokenizer(kind: str, path: str, files, tokenizer_path: str = "") -> str:
  """The vocabulary that goes with the checkpoint: given, next to it, or (open_clip) the one open_clip ships."""
  if tokenizer_path:
    return tokenizer_path
  folder = path if os.path.isdir(path) else os.path.dirname(path)  # local path: the input
  if all(os.path.exists(os.path.join(folder, f)) for f in files):  # local path: the input
    return folder if kind == "hf_clip" else os.path.join(folder, files[0])  # local path: the input
  if kind == "openclip":
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.submodule_search_locations:
      bundled = os.path.join(
        list(spec.submodule_search_locations)[0], files[0]
      )  # local path: the input
      if os.path.exists(bundled):  # local path: the input
        return bundled
  return ""


def _normalisation(kind: str, path: str):
  """Image mean/std: from an HF preprocessor_config.json if present, else the model family's."""
  config_path = (
    os.path.join(path, "preprocessor_config.json") if os.path.isdir(path) else ""
  )  # local path: the input
  if config_path and os.path.exists(config_path):  # local path: the input
    import json  # pylint: disable=import-outside-toplevel

    with open(config_path) as f:  # local path: the input
      pre = json.load(f)
    if "image_mean" in pre and "image_std" in pre:
      return tuple(pre["image_mean"]), tuple(pre["image_std"])
  if kind in ("hf_siglip", "big_vision_siglip", "hf_vilt"):
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
  return defaults.base_config().data.mean, defaults.base_config().data.std


def load_pretrained(path: str, kind: str, *, tokenizer_path: str = "", log=print, **options):
  """(vlm_jax config, params as NumPy arrays) of a public checkpoint.

  kind: 'hf_clip', 'hf_siglip', 'hf_vilt' or 'hf_flava' (path: an HF model folder), 'big_vision_siglip'
  (path: a big_vision SigLIP .npz, local or gs://) or 'openclip' (path: a
  .pt/.bin/.safetensors state dict of a CLIP or CoCa; options: act='quick_gelu'|'gelu', image_heads,
  text_heads, and for CoCa pool_heads, decoder_heads). The params
  fit the model that `config.model` builds; a mismatch fails with the offending parameter paths.
  """
  objectives, evals = None, None
  if kind == "hf_clip":
    model, params, objective, (tok_name, tok_files) = hf.convert_clip(path)
  elif kind == "hf_siglip":
    model, params, objective, (tok_name, tok_files) = hf.convert_siglip(path)
  elif kind == "big_vision_siglip":
    model, params, objective, (tok_name, tok_files) = big_vision.convert_siglip(path)
  elif kind == "openclip":
    model, params, objective, (tok_name, tok_files) = openclip.convert(path, **options)
  elif kind == "hf_vilt":
    model, params, missing, (tok_name, tok_files) = hf.convert_vilt(path)
    if missing:
      log(
        f"note: {path} has no {', '.join(missing)}; initialised to zero (fine-tune before using them)"
      )
    objectives, evals = FUSION_OBJECTIVES, FUSION_EVALS
  elif kind == "hf_flava":
    model, params, missing, dropped, (tok_name, tok_files) = hf.convert_flava(path)
    if missing:
      log(
        f"note: {path} has no {', '.join(missing)}; initialised to zero (fine-tune before using them)"
      )
    if dropped:
      log(
        f"note: left out {len(dropped)} tensors no vlm_jax FLAVA output reads: "
        f"{', '.join(sorted({'.'.join(n.split('.')[:2]) for n in dropped}))}"
      )
    objectives, evals = FLAVA_OBJECTIVES, FLAVA_EVALS
  else:
    raise ConfigError(f"unknown checkpoint kind {kind!r}; known: {', '.join(KINDS)}")
  if options and kind != "openclip":
    raise ConfigError(f"options {sorted(options)} only apply to --from openclip")
  config = defaults.base_config()
  towers = {k: model.pop(k) for k in ("image", "text", "multimodal", "decoder") if k in model}
  config.model.update(model)
  for name, fields in towers.items():
    config.model[name] = ml_collections.ConfigDict(fields)
  config.objectives = ml_collections.ConfigDict(
    objectives or {objective: dict(weight=1.0, impl="global")}
  )
  if evals:
    config.evals = ml_collections.ConfigDict(evals)
  mean, std = _normalisation(kind, path)
  config.data.update(
    tokenizer=tok_name,
    tokenizer_path=_find_tokenizer(kind, path, tok_files, tokenizer_path),
    mean=mean,
    std=std,
  )
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  check_fits(config, params, path)
  return config.lock(), params


def check_fits(config, params, where: str):
  """Raises ConfigError listing the parameter paths where `params` and the config's model disagree."""
  model = models.build(config.model, config.model.text.vocab_size)
  expected = models.abstract_params(model, config.model.image.image_size, config.model.text.max_len)
  checkpoint.check_params_match(
    checkpoint.flat_paths(params), checkpoint.flat_paths(expected), where
  )


def convert(
  kind: str, input_path: str, output: str, *, tokenizer_path: str = "", log=print, **options
):
  """Writes WORKDIR = `output`: config.json, checkpoints/0 and tokenizer/. Returns the config."""
  config, params = load_pretrained(
    input_path, kind, tokenizer_path=tokenizer_path, log=log, **options
  )
  output = storage.resolve(output)
  if storage.exists(storage.join(output, "checkpoints")):
    raise ConfigError(f"{output} already holds checkpoints; choose an empty --output")
  storage.check_writable_dir(output, "--output")
  config = ml_collections.ConfigDict(config.to_dict())
  source = config.data.tokenizer_path
  if source:
    # Copied next to the weights and referred to relative to the workdir, so the workdir can move.
    folder = storage.isdir(source)
    files = [storage.join(source, f) for f in ("vocab.json", "merges.txt")] if folder else [source]
    for f in files:
      storage.copy(f, storage.join(output, "tokenizer", storage.basename(f)))
    config.data.tokenizer_path = (
      "tokenizer" if folder else storage.join("tokenizer", storage.basename(source))
    )
  else:
    log(
      f"warning: no tokenizer vocabulary found for {input_path}; pass --tokenizer PATH, or set "
      "data.tokenizer_path when using the workdir"
    )
  ckpt = checkpoint.Checkpointer(storage.join(output, "checkpoints"), keep=1, async_save=False)
  ckpt.save(0, {"params": params})
  ckpt.close()
  config_utils.save_workdir_config(config, output)
  count = sum(x.size for x in jax.tree.leaves(params))
  log(f"Wrote {count / 1e6:.1f}M parameters of {input_path} ({kind}) to {output}")
  return config
