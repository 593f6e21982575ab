"""UniPELT (Mao et al. 2022): LoRA, prefix tuning and a Pfeiffer adapter in
every layer, each behind a learned gate (`gates`); `method.UniPELT`."""

from prompt_jax.methods.unipelt.method import UniPELT
