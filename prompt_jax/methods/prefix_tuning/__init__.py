"""Prefix tuning (Li & Liang 2021): the `PrefixTuning` method.

`layout` says where the per-layer key/value prefixes go on each backbone
(PEFT's conventions on decoders; 'paper' or 'peft_compat' on T5), `trees`
holds the two trainable forms (plain prefixes, or PEFT's reparameterisation
MLP) and the map between them, `method.PrefixTuning` binds them through the
backbone's prefix seams and exports the plain prefixes, and `peft_format`
converts to and from Hugging Face PEFT's tensors.
"""

from prompt_jax.methods.prefix_tuning.method import PrefixTuning
