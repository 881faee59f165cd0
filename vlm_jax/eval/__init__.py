"""Evaluators registered by name: `Evaluator(eval_config, experiment).run(params, image_emb) -> {name: value}`."""

from vlm_jax.eval import captioning, generative, linear_probe, matching, retrieval, zero_shot  # noqa: F401  (register themselves)
