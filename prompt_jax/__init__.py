"""prompt_jax: T5X-style prompt tuning on frozen backbones in JAX/Flax."""

__version__ = "0.1.0"
