"""LoRA (Hu et al. 2021): the `LoRA` method.

`targets` maps PEFT module names to the backbone's projections and their
seams, `method.LoRA` owns the trainable A/B tree behind the `Method`
interface (init, bind, merge), and `peft_format` converts it to and from
Hugging Face PEFT's adapter tensors.
"""

from prompt_jax.methods.lora.method import LoRA
