"""Tuning methods behind one `Method` interface, in one literal registry.

Each method is one folder (`methods/<name>/`) and one gin file
(`gin_configs/methods/<name>.gin`); `METHODS` maps its name to its class.
`TunedModel(lm, method)` is what the trainer and entry points run.
"""

from prompt_jax.methods.adapters import Adapters
from prompt_jax.methods.base import Method, TunedModel
from prompt_jax.methods.bitfit import BitFit
from prompt_jax.methods.compose import Compose
from prompt_jax.methods.full_finetune import FullFinetune
from prompt_jax.methods.ia3 import IA3
from prompt_jax.methods.ln_tuning import LNTuning
from prompt_jax.methods.lora import LoRA
from prompt_jax.methods.p_tuning import PTuning
from prompt_jax.methods.p_tuning_v2 import PTuningV2
from prompt_jax.methods.prefix_tuning import PrefixTuning
from prompt_jax.methods.prompt_bank import PromptBank
from prompt_jax.methods.prompt_tuning import PromptTuning
from prompt_jax.methods.unipelt import UniPELT

METHODS: dict[str, type[Method]] = {
    "prompt_tuning": PromptTuning,
    "full_finetune": FullFinetune,
    "lora": LoRA,
    "p_tuning": PTuning,
    "prefix_tuning": PrefixTuning,
    "p_tuning_v2": PTuningV2,
    "ia3": IA3,
    "adapters": Adapters,
    "bitfit": BitFit,
    "ln_tuning": LNTuning,
    "unipelt": UniPELT,
    "prompt_bank": PromptBank,
    "compose": Compose,
}
