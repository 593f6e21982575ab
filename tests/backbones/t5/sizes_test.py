"""Full-size T5 presets, checked with `jax.eval_shape` only (no allocation).

Parameter counts must equal the published Hugging Face counts (32128-row
vocab), and the per-device share of the parameters under model-parallel
rules must be about 1/(devices) of the whole.
"""

import functools
import math

import flax.core.meta
import jax
import pytest

from prompt_jax import partitioning
from prompt_jax.backbones.t5 import config as config_lib
from prompt_jax.backbones.t5 import network

# preset -> (exact HF `num_parameters()`, rounded published size).
_PUBLISHED = {
    "t5_1_1_small": (76_961_152, 77e6),
    "t5_1_1_base": (247_577_856, 248e6),
    "t5_1_1_large": (783_150_080, 783e6),
    "t5_1_1_xl": (2_849_757_184, 2.85e9),
    "t5_1_1_xxl": (11_135_332_352, 11.1e9),
    "t5_1_0_small": (60_506_624, 60e6),  # Tied head.
    "t5_1_0_base": (222_903_552, 220e6),  # Tied head.
}


@functools.lru_cache(maxsize=None)
def _abstract(name: str):
  """Boxed abstract params of a preset (eval_shape of init)."""
  model = network.T5Transformer(config_lib.PRESETS[name])
  return partitioning.abstract_variables(model)["params"]


def _count(abstract) -> int:
  leaves = jax.tree.leaves(flax.core.meta.unbox(abstract))
  return sum(math.prod(x.shape) for x in leaves)


def _share(name: str, data: int, model: int, parallelism: str) -> float:
  """Per-device parameter bytes / total parameter bytes."""
  abstract = _abstract(name)
  shapes = flax.core.meta.unbox(abstract)
  mesh = partitioning.make_mesh(data, model)
  rules = partitioning.standard_logical_axis_rules(parallelism)
  shardings = partitioning.param_shardings(abstract, mesh, rules)
  total = sum(math.prod(x.shape) * x.dtype.itemsize
              for x in jax.tree.leaves(shapes))
  return partitioning.per_device_bytes(shapes, shardings) / total


@pytest.mark.parametrize("name", sorted(_PUBLISHED))
def test_parameter_count_matches_published(name):
  exact, rounded = _PUBLISHED[name]
  count = _count(_abstract(name))
  print(f"{name}: {count:,} parameters")
  assert abs(count - rounded) / rounded < 0.015
  assert count == exact


@pytest.mark.parametrize("name", ["t5_1_1_large", "t5_1_1_xl", "t5_1_1_xxl",
                                  "t5_1_0_small"])
@pytest.mark.parametrize("data,model,parallelism", [
    (1, 8, "model"), (1, 8, "2d"), (2, 4, "2d")])
def test_model_parallel_share_is_an_eighth(name, data, model, parallelism):
  share = _share(name, data, model, parallelism)
  print(f"{name} {data}x{model} {parallelism}: {share:.4f} per device")
  assert abs(share - 1 / 8) < 0.15 / 8


@pytest.mark.parametrize("name,data,model,parallelism,expected", [
    ("t5_1_1_base", 2, 4, "model", 1 / 4),  # Params replicated over 'data'.
    ("t5_1_1_base", 2, 4, "2d", 1 / 8),
    ("t5_1_1_small", 4, 2, "2d", 1 / 8),
    ("t5_1_1_xxl", 8, 1, "data", 1.0),
])
def test_share_for_other_meshes(name, data, model, parallelism, expected):
  share = _share(name, data, model, parallelism)
  assert abs(share - expected) < 0.15 * expected


@pytest.mark.parametrize("name", ["t5_1_1_small", "t5_1_1_base"])
def test_indivisible_heads_stay_whole(name):
  """6 and 12 heads do not split 8 ways: attention stays replicated."""
  share = _share(name, 1, 8, "model")
  cfg = config_lib.PRESETS[name]
  shapes = flax.core.meta.unbox(_abstract(name))
  attn = sum(math.prod(x.shape) for path, x in
             jax.tree_util.tree_leaves_with_path(shapes)
             if "attention" in jax.tree_util.keystr(path))
  total = _count(_abstract(name))
  assert cfg.num_heads % 8 != 0
  expected = attn / total + (1 - attn / total) / 8  # Norms are negligible.
  assert abs(share - expected) < 0.01
