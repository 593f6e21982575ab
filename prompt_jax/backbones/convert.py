"""Checkpoint-mapping machinery shared by the backbone families.

Each family's `convert.py` maps its checkpoint names to our parameter tree;
every mismatch is collected and reported in one `CheckpointMismatchError`.
"""


class CheckpointMismatchError(ValueError):
  """Raised when checkpoint tensors do not match the model exactly."""


def raise_if_mismatch(source: str, missing: list, unexpected: list,
                      bad_shape: list, differ: list = (),
                      shared: str = "embedding") -> None:
  """One `CheckpointMismatchError` listing every problem, or nothing.

  `differ`: tied copies (e.g. `lm_head.weight`) unequal to `shared` (the
  embedding they must copy).
  """
  if not (missing or unexpected or bad_shape or differ):
    return
  parts = []
  for label, items in (("missing", missing), ("unexpected", unexpected),
                       ("wrong shape", bad_shape),
                       (f"tied but not equal to {shared}", differ)):
    if items:
      parts.append(f"{len(items)} {label}: " + "; ".join(items))
  raise CheckpointMismatchError(
      f"{source} does not match the model: " + " | ".join(parts))
