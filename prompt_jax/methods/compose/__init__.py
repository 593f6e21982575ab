"""Composition: several methods trained together on one frozen backbone
(e.g. a soft prompt plus LoRA), `Compose(methods=(...))`; `merge` holds the
rules for combining their seams."""

from prompt_jax.methods.compose.method import Compose
