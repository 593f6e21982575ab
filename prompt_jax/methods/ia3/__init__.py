"""IA3 (Liu et al. 2022, T-Few): the `IA3` method.

`targets` maps PEFT's IA3 target and feedforward module names to the
activations the backbone's seams scale (keys, values, MLP hidden),
`method.IA3` owns the trainable vectors behind the `Method` interface (init
to 1, bind, merge), and `peft_format` converts them to and from Hugging Face
PEFT's `ia3_l` tensors.
"""

from prompt_jax.methods.ia3.method import IA3
