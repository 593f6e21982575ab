"""Shared type aliases and the logical axis names used across prompt_jax.

Every parameter and every block-boundary activation names its axes with the
constants below; `partitioning.py` maps them to mesh axes. Keeping the names
here (and nowhere else as string literals) means a rule set can be checked
against the complete list `ALL_AXES`.

Notation used in docstrings: B batch, T length (T_in encoder, T_out decoder),
H model dim, N heads, D head dim, F mlp dim, V vocab, P prompt length,
L layers, R LoRA rank.
"""

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
DType = Any

# Parameter and activation axes.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
VOCAB = "vocab"
RELPOS_BUCKETS = "relpos_buckets"
# Soft-prompt axes: separate from EMBED so prompts stay replicated by default.
PROMPT = "prompt"
PROMPT_EMBED = "prompt_embed"
# Low-rank delta rank axis (LoRA).
RANK = "rank"
# Decode-cache length (the max decode length, not the input length).
CACHE_LENGTH = "cache_length"

ALL_AXES = (BATCH, LENGTH, EMBED, MLP, HEADS, KV, VOCAB, RELPOS_BUCKETS,
            PROMPT, PROMPT_EMBED, RANK, CACHE_LENGTH)
