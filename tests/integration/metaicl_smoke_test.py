"""MetaICL smoke run: meta-train a soft prompt, then evaluate an unseen task.

Three real MetaICL tasks with short rows (kilt_fever, google_wellformed_query,
poem_sentiment) in their 2-shot meta-training form (`tasks.kshot`, SmolLM2
vocabulary, decoder layout, split `meta_train`, max_length 128) are mixed
examples-proportionally (`tasks.meta_training.rate_fn`); `prompt_jax.train`
trains a 4-token prompt for 6 steps on the frozen random tiny decoder
(SmolLM2's 49152-token vocabulary) on an 8 x 1 mesh of fake CPU devices.
The saved prompt is then evaluated by `--mode=unseen`'s decoder path
(`unseen_decoder_eval.evaluate_unseen_decoder_run`) on superglue-copa, a
fourth task outside the mixture, k = 2, seeds 13 and 21, 4 test rows:

  table = ude.evaluate_unseen_decoder_run(
      model_dir=model_dir, backbone=BACKBONE, method=PROMPT, mesh_cfg=MESH,
      task_names=["superglue-copa"], cfg=EVAL_CFG, trained_on=[MIXTURE])
  table["rows"][0]["seeds"]  # {"13": accuracy, "21": accuracy}
"""

import json
import os

import numpy as np
import optax
import pytest
import seqio

from prompt_jax.data import seqio_batches as data_lib
from prompt_jax import setup as run_setup
from prompt_jax import train as train_lib
from prompt_jax.evaluators import unseen_decoder as ude
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.methods import prompt_tuning
from tasks import kshot
from tasks import meta_training

TRAIN_FOLDERS = ("kilt_fever", "google_wellformed_query", "poem_sentiment")
UNSEEN_FOLDER = "superglue-copa"
MIXTURE = "metaicl_smoke_test_2shot_direct_smollm2_train_v100"
K = 2
MAX_LENGTH = 128
STEPS = 6
PROMPT_LENGTH = 4
EMB_DIM = 32  # The 'tiny' decoder preset.
SEEDS = (13, 21)
ROWS = 4
BACKBONE = run_setup.BackboneConfig(
    random_weights=True, preset="tiny", kind="decoder", vocab_path="smollm2",
    overrides={"vocab_size": 49152, "max_position_embeddings": 512})
PROMPT = prompt_tuning.PromptTuning(length=PROMPT_LENGTH,
                                init=specs.random_uniform())
MESH = run_setup.MeshConfig(data=8, model=1)
EVAL_CFG = ude.DecoderEvalConfig(k=K, seeds=SEEDS, max_rows_per_task=ROWS,
                                 max_length=MAX_LENGTH,
                                 max_length_per_example=64, batch_size=8)


def _task_name(folder: str) -> str:
  return f"metaicl_smoke_test_{folder.replace('-', '_')}_v100"


@pytest.fixture(scope="module", name="mixture")
def _mixture():
  """Registers the three 2-shot tasks and their mixture; removes them after."""
  names = [kshot.register_kshot_task(
      folder, k=K, seed=100, method="direct", vocabulary="smollm2",
      name=_task_name(folder), max_length=MAX_LENGTH,
      max_length_per_example=64).name for folder in TRAIN_FOLDERS]
  seqio.MixtureRegistry.remove(MIXTURE)
  seqio.MixtureRegistry.add(MIXTURE, names,
                            default_rate=meta_training.rate_fn(None))
  yield MIXTURE
  seqio.MixtureRegistry.remove(MIXTURE)
  for name in names:
    seqio.TaskRegistry.remove(name)


@pytest.fixture(scope="module", name="trained")
def _trained(mixture, tmp_path_factory):
  """(model_dir, train result) of a 6-step meta-training run."""
  model_dir = str(tmp_path_factory.mktemp("metaicl_smoke"))
  result = train_lib.train(
      model_dir=model_dir, backbone=BACKBONE, method=PROMPT,
      train_dataset_cfg=data_lib.DatasetConfig(
          mixture, {"inputs": MAX_LENGTH, "targets": 16}, "meta_train",
          batch_size=8, feature_converter="prefix_lm", trim_to_multiple=64),
      optimizer=optax.adam(0.3), total_steps=STEPS, mesh_cfg=MESH,
      log_every_steps=1)
  return model_dir, result


def test_meta_training_trains_only_the_prompt(trained):
  model_dir, result = trained
  assert result["step"] == STEPS and not result["preempted"]
  assert np.isfinite(result["train"]["loss"]) and result["train"]["loss"] > 0
  leaves = {k: {n: np.shape(v) for n, v in sub.items()}
            for k, sub in result["trainable"].items()}
  assert leaves == {"prompt": {"prompt": (PROMPT_LENGTH, EMB_DIM)}}
  saved = np.load(os.path.join(model_dir, "prompts",
                               f"prompt_step_{STEPS}.npy"))
  np.testing.assert_allclose(
      saved, np.asarray(result["trainable"]["prompt"]["prompt"]), rtol=1e-6)
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if r["split"] == "train"] == list(
      range(1, STEPS + 1))
  assert all(np.isfinite(r["loss"]) for r in rows)


def test_unseen_task_is_refused_if_trained_on(trained, mixture):
  model_dir, _ = trained
  with pytest.raises(ValueError, match="kilt_fever.*trained on"):
    ude.evaluate_unseen_decoder_run(
        model_dir=model_dir, backbone=BACKBONE, method=PROMPT, mesh_cfg=MESH,
        task_names=["kilt_fever"], cfg=EVAL_CFG, trained_on=[mixture])


def test_meta_trained_prompt_on_unseen_task(trained, mixture):
  model_dir, _ = trained
  trained_folders = {seqio.get_mixture_or_task(t.name).source.folder
                     for t in seqio.get_mixture_or_task(mixture).tasks}
  assert trained_folders == set(TRAIN_FOLDERS)
  assert UNSEEN_FOLDER not in trained_folders
  table = ude.evaluate_unseen_decoder_run(
      model_dir=model_dir, backbone=BACKBONE, method=PROMPT, mesh_cfg=MESH,
      task_names=[UNSEEN_FOLDER], cfg=EVAL_CFG, trained_on=[mixture],
      output_dir=os.path.join(model_dir, "unseen"))
  assert table["prompt"] and table["skipped"] == []
  [row] = table["rows"]
  assert row["task"] == UNSEEN_FOLDER and row["metric"] == "accuracy"
  assert row["examples"] == ROWS
  assert set(row["seeds"]) == {str(s) for s in SEEDS}
  scores = list(row["seeds"].values())
  # The fixed seeds' values: 2 of the 4 COPA rows right for both seeds
  # (chance is 50%: 6 steps on a random tiny decoder teach nothing).
  assert row["seeds"] == {"13": 50.0, "21": 50.0}
  assert row["score"] == pytest.approx(np.mean(scores))
  assert row["worst"] == min(scores)
  assert table["mean"] == pytest.approx(row["score"])
  assert table["mean_worst"] == row["worst"]
  stem = f"unseen_decoder_direct_seed_test_k{K}"
  with open(os.path.join(model_dir, "unseen", f"{stem}.json")) as f:
    assert json.load(f)["rows"][0]["seeds"] == row["seeds"]
