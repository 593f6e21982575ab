"""Parity of the Flax T5 with Hugging Face transformers on random weights.

The numbers come from `prompt_jax.testing.parity_checks`, which also bounds them;
`bench/parity_checks.py` stores the same measurements for docs/RESULTS.md.
"""

import numpy as np
import pytest
import torch

from prompt_jax.testing import parity_checks as pc
from prompt_jax import testing
from prompt_jax.backbones import layers

STYLES = sorted(testing.HF_STYLES)


@pytest.mark.parametrize("style", STYLES)
def test_logits_match_transformers(style):
  ours, ref = pc.t5_logits(style)
  assert ours.dtype == np.float32
  err = pc.max_abs_diff(ours, ref)
  print(f"{style}: max |ours - HF| = {err:.2e}")
  assert err <= pc.bound(f"t5_logits_{style}")


@pytest.mark.parametrize("style", STYLES)
def test_encoder_output_matches_transformers(style):
  encoded, mask, ref, enc = pc.t5_encoder(style)
  np.testing.assert_array_equal(mask, enc != 0)
  assert pc.max_abs_diff(encoded, ref) <= pc.bound(f"t5_encoder_{style}")


def test_long_sequences_use_log_buckets():
  """Lengths beyond max_distance exercise the logarithmic buckets."""
  assert pc.max_abs_diff(*pc.t5_long_logits()) <= pc.bound("t5_logits_long")


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20)])
def test_relative_position_bucket_matches_transformers(
    bidirectional, num_buckets, max_distance):
  from transformers.models.t5 import modeling_t5  # pylint: disable=g-import-not-at-top
  rel = np.arange(-600, 601)
  ref = modeling_t5.T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      torch.tensor(rel), bidirectional, num_buckets, max_distance).numpy()
  ours = layers.relative_position_bucket(rel, bidirectional, num_buckets,
                                         max_distance)
  np.testing.assert_array_equal(np.asarray(ours), ref)


def test_bf16_compute_stays_close_and_returns_fp32():
  bf16, full = pc.t5_bf16_logits()
  assert bf16.dtype == np.float32
  err = pc.max_abs_diff(bf16, full)
  assert 1e-3 < err <= pc.bound("t5_bf16")  # Really computed in bf16.
