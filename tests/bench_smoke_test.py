"""Smoke test of `bench/train_throughput.py` on the tiny CPU configuration."""

import jax
import pytest

from prompt_jax import testing
from prompt_jax.backbones.t5 import config as config_lib

bench = testing.load_bench_script("train_throughput")

_POSITIVE = ("batch", "in_len", "text_len", "prompt_len", "out_len",
             "trainable", "total", "num_devices", "step_s", "step_s_mean",
             "ex_per_s", "tok_per_s", "tflop_per_step", "tflop_per_step_xla",
             "mfu", "mfu_xla", "peak_tflops", "xla_mem_gb", "loss")


def test_tiny_cpu_run_reports_every_field(capsys):
  rows = bench.main(["--steps", "2", "--warmup", "1"])
  assert len(rows) == 1
  row = rows[0]
  assert "error" not in row, row.get("error")
  for key in _POSITIVE:
    assert isinstance(row[key], (int, float)) and row[key] > 0, (key, row)
  assert row["backend"] == "cpu" and row["preset"] == "t5_1_1_tiny"
  assert (row["batch"], row["in_len"], row["prompt_len"]) == (8, 64, 16)
  assert row["text_len"] == 48
  assert row["param_dtype"] == "bfloat16"
  assert row["prompt_dtype"] == "float32"
  assert row["trainable"] == 16 * 16  # P x H of t5_1_1_tiny.
  assert row["mesh"] == f"{jax.device_count()},1"
  assert row["peak_mem_gb"] == "n/a"  # CPU devices report no memory stats.
  assert row["tok_per_s"] == pytest.approx(
      row["batch"] * (64 + 8) / row["step_s"], rel=1e-3)
  out = capsys.readouterr().out
  assert '"ex_per_s"' in out and "MFU_xla" in out


def test_analytic_flops_match_xla_cost_analysis():
  """Matmuls dominate at this width, so XLA's count is a few % above ours."""
  cfg = config_lib.T5Config(vocab_size=1024, emb_dim=256, num_heads=4,
                            head_dim=64, mlp_dim=512, num_encoder_layers=2,
                            num_decoder_layers=2, dtype=jax.numpy.bfloat16,
                            param_dtype=jax.numpy.bfloat16)
  bc = bench.BenchConfig(size="mid", batch=8, in_len=128, prompt_len=16,
                         out_len=16, steps=1, warmup=0,
                         mesh=(jax.device_count(), 1), microbatches=1,
                         peak_tflops=1.0, param_dtype="bfloat16")
  compiled = bench.compile_step(bench.build(bc, cfg), jax.random.key(0))
  per_device, _ = bench.xla_cost(compiled)
  analytic = bench.analytic_flops(cfg, 8, 128, 16)
  ratio = per_device * jax.device_count() / analytic["total"]
  assert 1.0 <= ratio < 1.06, ratio
  assert 1.0 < analytic["backward"] / analytic["forward"] < 1.1


def test_bad_size_is_a_one_line_usage_error(capsys):
  with pytest.raises(SystemExit):
    bench.configs_from_args(["huge"])
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "unknown size 'huge'" in err


@pytest.mark.parametrize("size,ex_per_s,mfu", [
    ("base", 217.6, 0.055), ("large", 86.8, 0.076), ("xl", 49.1, 0.155)])
def test_analytic_flops_agree_with_the_anchor_flop_counter(size, ex_per_s,
                                                           mfu):
  """The anchor's published ex/s and MFU (torch FlopCounterMode) at B=32."""
  anchor_flops = mfu * 989e12 * 32 / ex_per_s
  ours = bench.analytic_flops(bench.t5_config(size, "bfloat16"), 32, 512, 32)
  # The anchor rounds MFU to 3 decimals (up to +-1%).
  assert ours["total"] == pytest.approx(anchor_flops, rel=0.012)


def test_decoder_cpu_bench_tiny_preset_two_steps(capsys):
  """bench/decoder_cpu_bench.py end to end on a random tiny decoder."""
  decoder_bench = testing.load_bench_script("decoder_cpu_bench")
  row = decoder_bench.main(["--preset", "tiny", "--steps", "2", "--warmup",
                            "0"])
  assert row["anchor"] == "skipped (--anchor skip)"  # Presets skip it.
  assert (row["batch"], row["text_len"], row["prompt_len"]) == (8, 64, 20)
  assert row["loss_tokens"] == 8 * 63  # Token k+1 from slot k.
  assert row["num_devices"] == 1 and len(row["block_step_s"]) == 2
  assert row["steps"] == 2 and row["step_s"] > 0
  assert row["ex_per_s"] == pytest.approx(8 / row["step_s"], rel=1e-2)
  assert 0 < row["loss"] < 20  # Finite: ids fit the preset's vocabulary.
  assert '"ratio_ex_per_s"' not in capsys.readouterr().out
  assert decoder_bench.parse_anchor_output(
      "peft smollm2 cpu prompt-tuning: batch 8, text 64 + 20 prompt tokens:"
      " 5.02 s/step, 1.59 ex/s, loss 12.42") == {
          "anchor_step_s": 5.02, "anchor_ex_per_s": 1.59,
          "anchor_loss": 12.42}
  with pytest.raises(ValueError, match="anchor printed no 's/step, ex/s'"):
    decoder_bench.parse_anchor_output("Traceback ...\nImportError: peft")
