"""P-tuning v2 (Liu et al. 2022, "Deep Prompt Tuning"): the `PTuningV2`
method, prefix tuning's per-layer key/value prompts without
reparameterisation (`method.PTuningV2` reuses `prefix_tuning`).
"""

from prompt_jax.methods.p_tuning_v2.method import PTuningV2
