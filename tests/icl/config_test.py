"""Tests for prompt_jax.icl.config (ICLConfig)."""

import pytest

from prompt_jax.icl import config as icl_config


def test_variant_names_every_setting():
  assert icl_config.ICLConfig().variant == "direct_seed"
  assert icl_config.ICLConfig(
      k_shot=2, method="channel", demonstrations="knn",
      calibration="contextual").variant == "channel_knn_calibrated"
  assert icl_config.ICLConfig(
      k_shot=2, order="locale", order_probe="dev").variant == (
          "direct_seed_locale_devprobe")


def test_seeds_become_a_tuple():
  assert icl_config.ICLConfig(seeds=[13, 21]).seeds == (13, 21)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="noisy"), r"method='noisy'; use one of \('direct',"),
    (dict(order="random"), r"order='random'; use one of \(None,"),
    (dict(order_probe="x"), "order_probe='x'; use one of"),
    (dict(score_normalization="max"), "score_normalization='max'"),
    (dict(k_shot=-1), "k_shot=-1 must be >= 0"),
    (dict(k_shot=2, seeds=()), "k_shot=2 must be >= 0, with seeds"),
    (dict(demonstrations="knn"), "demonstrations='knn' needs k_shot > 0"),
    (dict(max_examples_per_task=0), "max_examples_per_task=0 must be > 0"),
])
def test_bad_values_are_one_line_errors(kwargs, message):
  with pytest.raises(ValueError, match=message) as error:
    icl_config.ICLConfig(**kwargs)
  assert "\n" not in str(error.value)
  assert str(error.value).startswith("ICLConfig: ")
