"""BitFit for bias-free backbones (T5, Llama): the `BitFit` method.

`targets` maps PEFT module names (or 'all-linear', 'beft') to projections
and builds the bias seams, `method.BitFit` owns the zero-initialised biases
behind the `Method` interface, and `peft_format` converts them to and from
Hugging Face PEFT's BEFT tensors (`beft_bias`).
"""

from prompt_jax.methods.bitfit.method import BitFit
