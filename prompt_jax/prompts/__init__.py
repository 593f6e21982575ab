"""Soft prompts (Lester et al. 2021): initializers, module, combination.

`initializers` builds [P, H] starting values, `modules.Prompt` owns the
trainable parameter and `combine` places it in the encoder input through the
backbone's `encoder_embed_fn` seam. Nothing here knows about training.
"""

from prompt_jax.prompts.combine import (CombinationFn, encoder_prompt_seams,
                                        prefix, suffix)
from prompt_jax.prompts.initializers import (PromptInitializer, from_array,
                                             from_class_labels, from_npy,
                                             from_sampled_vocab, from_text,
                                             random_uniform)
from prompt_jax.prompts.modules import Prompt
