"""Unseen-task evaluation through the k-shot loop, either model family.

`evaluators.unseen.evaluate_unseen` sends a decoder-only backbone here, and a
T5 whose `ICLConfig` asks for channel scoring or order selection:
`eval_config` turns the `ICLConfig` into `unseen_decoder.KShotEvalConfig`
with the layout and length budget of the model family (`family_budget`),
and `evaluate_unseen_kshot_run` (`unseen_decoder`'s) builds the run and
writes the table of `unseen_decoder.evaluate_folders` (MetaICL test files).

Example:

  cfg = eval_config(ICLConfig(k_shot=4, method="channel"),
                    models.ENCODER_DECODER, {"inputs": 512, "targets": 16})
  cfg.layout, cfg.max_length   # 'enc_dec', 512
"""

from collections.abc import Mapping

from prompt_jax import models
from prompt_jax.evaluators import unseen_decoder as ude
from prompt_jax.icl import config as icl_config


def family_budget(family: str, task_feature_lengths: Mapping[str, int]
                  ) -> tuple[str, int]:
  """(kshot layout, `max_length`) of a model family: a decoder's context and
  target share inputs + targets tokens; a T5's encoder input is `inputs`
  long (inputs - 1 tokens + EOS), its target separate.

  Raises:
    ValueError: (one line) for an unknown family.
  """
  if family == models.DECODER_ONLY:
    return "decoder", sum(task_feature_lengths.values())
  if family == models.ENCODER_DECODER:
    return "enc_dec", task_feature_lengths["inputs"]
  raise ValueError(f"unseen_kshot: unknown model family {family!r}")


def eval_config(icl: icl_config.ICLConfig, family: str,
                task_feature_lengths: Mapping[str, int], *, split: str = "test",
                batch_size: int = 16) -> ude.KShotEvalConfig:
  """The `KShotEvalConfig` of `icl` for a model of `family`."""
  layout, max_length = family_budget(family, task_feature_lengths)
  return ude.KShotEvalConfig(
      k=icl.k_shot, seeds=icl.seeds, method=icl.method,
      calibration=icl.calibration, demonstrations=icl.demonstrations,
      split=split, max_rows_per_task=icl.max_examples_per_task,
      score_normalization=icl.score_normalization, batch_size=batch_size,
      max_length=max_length,
      max_length_per_example=icl.max_length_per_example, order=icl.order,
      probe=icl.order_probe, layout=layout)


# The run builder lives with the loop; re-exported here.
evaluate_unseen_kshot_run = ude.evaluate_unseen_kshot_run
