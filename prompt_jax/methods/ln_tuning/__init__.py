"""LN tuning (Qi et al. 2022): the `LNTuning` method.

`norms` maps PEFT's LN-tuning target names to the backbone's norm scales,
`method.LNTuning` makes those scales trainable behind the `Method`
interface (taken out of the frozen tree, put back by `bind`), and
`peft_format` converts them to and from Hugging Face PEFT's
`ln_tuning_layers` tensors.
"""

from prompt_jax.methods.ln_tuning.method import LNTuning
