"""`ICLConfig`: the in-context settings of an unseen-task evaluation.

One dataclass for both model families (`evaluators.unseen.evaluate_unseen`
takes it; `evaluators.unseen_decoder.eval_config` turns it into the k-shot
loop's `KShotEvalConfig`, with the layout and length budget of the model's
family):

  k_shot, seeds          demonstrations per input (0: zero-shot), one run per
                         seed when k_shot > 0;
  method                 'direct' (score y after x) or 'channel' (x after y);
  calibration            None or 'contextual' (Zhao et al. 2021);
  demonstrations         'seed' (the seed's train rows) or 'knn' (KATE);
  order, order_probe     demonstration order None | 'globale' | 'locale'
                         (Lu et al. 2022), probes 'generated' or 'dev';
  score_normalization    'mean' (per token, MetaICL) or 'sum';
  max_examples_per_task  the first N rows of each task (None: all);
  max_length_per_example token budget of one demonstration x + y.

Example:

  icl = ICLConfig(k_shot=4, seeds=(13, 21), method="channel",
                  order="globale")
  icl.variant   # 'channel_seed_globale'
"""

import dataclasses
from collections.abc import Sequence

METHODS = ("direct", "channel")
CALIBRATIONS = (None, "contextual")
DEMONSTRATIONS = ("seed", "knn")
NORMALIZATIONS = ("mean", "sum")
ORDERS = (None, "globale", "locale")
PROBES = ("generated", "dev")


@dataclasses.dataclass(frozen=True)
class ICLConfig:
  """In-context settings shared by both families (module docstring)."""
  k_shot: int = 0
  seeds: Sequence[int] = (100, 13, 21, 42, 87)
  method: str = "direct"
  calibration: str | None = None
  demonstrations: str = "seed"
  order: str | None = None
  order_probe: str = "generated"
  score_normalization: str = "mean"
  max_examples_per_task: int | None = None
  max_length_per_example: int = 256

  def __post_init__(self):
    object.__setattr__(self, "seeds", tuple(self.seeds))
    for name, allowed in (("method", METHODS), ("calibration", CALIBRATIONS),
                          ("demonstrations", DEMONSTRATIONS),
                          ("order", ORDERS), ("order_probe", PROBES),
                          ("score_normalization", NORMALIZATIONS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"ICLConfig: {name}={getattr(self, name)!r}; use one"
                         f" of {allowed}")
    for ok, message in [
        (self.k_shot >= 0 and (not self.k_shot or self.seeds),
         f"k_shot={self.k_shot} must be >= 0, with seeds when > 0"),
        (self.demonstrations != "knn" or self.k_shot > 0,
         "demonstrations='knn' needs k_shot > 0"),
        (self.max_examples_per_task is None or self.max_examples_per_task > 0,
         f"max_examples_per_task={self.max_examples_per_task} must be > 0"),
        (self.max_length_per_example > 0, "max_length_per_example="
         f"{self.max_length_per_example} must be > 0")]:
      if not ok:
        raise ValueError(f"ICLConfig: {message}")

  @property
  def variant(self) -> str:
    """e.g. `direct_seed`, `channel_knn_calibrated`, `direct_seed_globale`."""
    order = (f"_{self.order}" + ("_devprobe" if self.order_probe == "dev"
                                 else "") if self.order else "")
    return (f"{self.method}_{self.demonstrations}{order}"
            + ("_calibrated" if self.calibration else ""))
