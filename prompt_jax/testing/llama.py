"""Importable test helpers for the decoder: random reference Llama models.

Nothing here downloads anything: reference models are transformers
`LlamaForCausalLM`s built from a `DecoderConfig` with seeded random weights.
"""

from typing import Any

import flax.traverse_util
import numpy as np

from prompt_jax.backbones.llama import config as config_lib
from prompt_jax.backbones.llama import convert


def tiny_decoder_config(**overrides) -> config_lib.DecoderConfig:
  """Grouped-query (4 query / 2 kv heads), 3 layers, small enough for tests."""
  fields = dict(vocab_size=97, emb_dim=32, num_heads=4, num_kv_heads=2,
                head_dim=8, mlp_dim=48, num_layers=3, rope_theta=10000.0,
                rms_norm_eps=1e-5, bos_id=1, eos_id=2, pad_id=0,
                max_position_embeddings=64)
  fields.update(overrides)
  return config_lib.DecoderConfig(**fields)


def random_hf_llama(cfg: config_lib.DecoderConfig, seed: int = 0,
                    init_std: float = 0.2) -> tuple[Any, dict]:
  """Builds a random `transformers.LlamaForCausalLM` shaped like `cfg`.

  Weights are drawn with std `init_std` (HF's default 0.02 gives a near-
  uniform next-token distribution, where greedy ties are fragile), norm
  scales are randomised around 1, and an untied head is independent of the
  embedding.

  Returns:
    (torch model in eval mode with eager attention, our param tree).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  hf_cfg = transformers.LlamaConfig(**config_lib.to_hf_config(cfg),
                                    initializer_range=init_std)
  hf_cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.LlamaForCausalLM(hf_cfg).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    if not cfg.tie_word_embeddings:
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn(model.lm_head.weight.shape, generator=gen) * init_std)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return model, convert.params_from_hf(state, cfg, "random HF Llama")


def random_params(cfg: config_lib.DecoderConfig, seed: int = 0,
                  init_std: float = 0.2) -> dict:
  """Random params of `DecoderLM(cfg)` drawn like `random_hf_llama`'s.

  Every kernel and the embedding ~ N(0, init_std^2), norm scales ~
  N(1, 0.1^2): a peaked but not degenerate next-token distribution (Flax's
  default init makes a tied model echo its input token). No torch needed.
  """
  rng = np.random.RandomState(seed)
  params = {}
  for path, spec in convert.abstract_params(cfg).items():
    if path.endswith("scale"):
      value = 1.0 + 0.1 * rng.standard_normal(spec.shape)
    else:
      value = init_std * rng.standard_normal(spec.shape)
    params[path] = value.astype(np.float32)
  return flax.traverse_util.unflatten_dict(params, sep="/")
