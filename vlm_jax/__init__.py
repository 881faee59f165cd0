"""vlm_jax: vision-language pretraining objectives on one pjit-sharded training loop."""

__version__ = "0.1.0"
