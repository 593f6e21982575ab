"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): the `PTuning` method.

`encoder` is PEFT's prompt encoder (MLP or bidirectional LSTM) in JAX,
`template` parses and renders hybrid templates (pseudo tokens among anchor
tokens), `method.PTuning` places the encoded prompt through prompt
tuning's embed seam or the backbone's pseudo-token seam, and `peft_format`
imports and exports PEFT's PromptEncoder tensors.
"""

from prompt_jax.methods.p_tuning.method import PTuning
