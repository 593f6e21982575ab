"""Importable test helpers: tiny configs and random reference models.

Nothing here downloads anything: reference models are built from
`transformers` configs with random weights (seeded).
"""

from typing import Any

import numpy as np

from prompt_jax.backbones.t5 import config as config_lib
from prompt_jax.backbones.t5 import convert

# Two reference styles: T5 1.0 (ReLU, tied, scaled logits) and T5 1.1
# (gated-GELU, untied head). Several layers and heads, asymmetric depth.
HF_STYLES = {
    "t5_1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5_1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def tiny_t5_config(**overrides) -> config_lib.T5Config:
  """A T5 1.1-style config small enough for any unit test."""
  return config_lib.preset("t5_1_1_tiny", **overrides)


def random_hf_t5(style: str, seed: int = 0, vocab_size: int = 99,
                 **overrides) -> tuple[Any, config_lib.T5Config, dict]:
  """Builds a random `transformers.T5ForConditionalGeneration`.

  Transformers 5 ties `lm_head` to the embedding even for untied configs, so
  for T5 1.1 the head is replaced by an independent random matrix.

  Returns:
    (torch model in eval mode, matching T5Config, our param tree).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  kwargs = dict(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=48,
                num_layers=3, num_decoder_layers=2, num_heads=4,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=20, dropout_rate=0.0)
  kwargs.update(HF_STYLES[style])
  kwargs.update(overrides)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**kwargs)).eval()
  tied = kwargs["tie_word_embeddings"]
  if not tied:
    gen = torch.Generator().manual_seed(seed + 1)
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn(vocab_size, kwargs["d_model"], generator=gen) * 0.2)
  cfg = config_lib.from_hf_config(
      model.config.to_dict() | {"tie_word_embeddings": tied})
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return model, cfg, convert.params_from_hf(state, cfg, "random HF model")


def padded_batch(rng: np.random.RandomState, batch: int, length: int,
                 vocab_size: int, lengths: list[int] | None = None,
                 start_with_pad: bool = False) -> np.ndarray:
  """Random ids [B, T] in [2, V) with padding (0) after `lengths[b]`."""
  ids = rng.randint(2, vocab_size, (batch, length)).astype(np.int32)
  for b, n in enumerate(lengths or []):
    ids[b, n:] = 0
  if start_with_pad:
    ids[:, 0] = 0
  return ids


def main_subprocess(args: list[str]):
  """`python -m prompt_jax.main ARGS` as a child process (stderr piped)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return subprocess.Popen([sys.executable, "-m", "prompt_jax.main", *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)


def metric_rows(model_dir, split: str = "train") -> list[dict]:
  """Rows of `model_dir/metrics.jsonl` for one split."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def kill_then_resume(train_args, root, steps: int, kill_after_step: int
                     ) -> tuple[np.ndarray, np.ndarray, int]:
  """SIGKILLs a training run once step `kill_after_step` is saved, resumes
  it, and runs an uninterrupted twin.

  The killed and the resumed run are `python -m prompt_jax.main` child
  processes; the twin runs in this process (`main.run`, the same code and
  XLA flags) while the resumed child runs.

  Args:
    train_args: `model_dir -> argv` for `prompt_jax.main` (same seed).
    root: a temporary directory (pathlib.Path).
    steps: total steps of both runs.
    kill_after_step: the saved step whose prompt file triggers the kill.

  Returns:
    (final prompt of the resumed run, final prompt of the uninterrupted
    run, first step the resumed process logged).
  """
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from prompt_jax import main  # pylint: disable=g-import-not-at-top
  killed_dir, clean_dir = root / "killed", root / "clean"
  proc = main_subprocess(train_args(killed_dir))
  marker = killed_dir / "prompts" / f"prompt_step_{kill_after_step}.npy"
  deadline = time.time() + 240
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  if proc.poll() is not None:
    raise AssertionError("run ended before it could be killed: "
                         + proc.stderr.read()[-2000:])
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  final = f"prompts/prompt_step_{steps}.npy"
  if (killed_dir / final).exists():
    raise AssertionError("the killed run had already finished")
  logged_before = len(metric_rows(killed_dir))
  resumed = main_subprocess(train_args(killed_dir))
  try:
    clean = main.run(train_args(clean_dir))
  finally:
    if resumed.wait(timeout=600) != 0:
      raise AssertionError(resumed.stderr.read()[-3000:])
  if clean["step"] != steps or clean["preempted"]:
    raise AssertionError(f"the uninterrupted run ended at {clean['step']}")
  first_resumed = metric_rows(killed_dir)[logged_before]["step"]
  return (np.load(killed_dir / final), np.load(clean_dir / final),
          first_resumed)


def backbone_shaped_leaves(tree: Any, frozen: Any, trainable: Any
                           ) -> list[str]:
  """'path [shape]' of every leaf of `tree` shaped like a `frozen` leaf.

  Shapes that some `trainable` leaf also has are allowed. A frozen weight,
  its gradient or an optimizer moment for it would be listed. Leaves may be
  arrays or `jax.ShapeDtypeStruct`s (e.g. a lowered step's `out_info`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  def shape(x):
    return tuple(getattr(x, "shape", np.shape(x)))
  backbone = ({shape(x) for x in jax.tree.leaves(frozen)}
              - {shape(x) for x in jax.tree.leaves(trainable)})
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [f"{jax.tree_util.keystr(path)} {list(shape(x))}"
          for path, x in flat if shape(x) in backbone]


def load_bench_script(name: str):
  """Imports `bench/<name>.py` (the bench folder is not a package) as a
  module, for tests of the results scripts."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
