"""Prompt ensembles: N prompts for one task, evaluated in one batch.

A `PromptBank` whose "tasks" are the N members of an ensemble holds the
prompts. `expand` repeats every example once per member, routed to that
member's prompt; `average` folds the members' option scores back into one
prediction per example by averaging the members' probabilities over the
options (each member's scores normalised over the options first).
"""

import numpy as np

from prompt_jax.methods.prompt_bank import rows


def expand(tokens: np.ndarray, members: int, length: int) -> np.ndarray:
  """tokens [B, T] -> [B * N, P + T]: row b * N + k is example b with
  member k's prompt ids first."""
  index = np.tile(np.arange(members), tokens.shape[0])
  return rows.prepend(np.repeat(tokens, members, axis=0), index, length)


def average(scores: np.ndarray, members: int) -> np.ndarray:
  """Option log-scores [B * N, C] (rows as `expand`) -> [B, C] log of the
  members' mean option probabilities."""
  scores = np.asarray(scores, np.float64)
  shifted = scores - scores.max(axis=-1, keepdims=True)
  probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
  return np.log(probs.reshape(-1, members, probs.shape[-1]).mean(axis=1))
