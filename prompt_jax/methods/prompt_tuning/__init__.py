"""Soft prompts (Lester et al. 2021): the `PromptTuning` method.

`initializers` builds [P, H] starting values (`specs` are their gin-bindable
recipes), `modules.Prompt` owns the trainable parameter, `combine` places
it in the input through the backbone's embed seam and `method.PromptTuning`
ties them together behind the `Method` interface.
"""

from prompt_jax.methods.prompt_tuning.method import PromptTuning
