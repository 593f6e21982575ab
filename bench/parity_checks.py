"""The parity-checks table of docs/RESULTS.md, from measured numbers.

Runs every check of `prompt_jax.testing.parity_checks` (the functions the parity tests
call, with the bounds they assert) in the suite's setting (8 fake CPU devices,
fp32), stores the rows in bench/results/parity/parity_checks.json and rewrites
the section of docs/RESULTS.md between the `parity_checks.py` markers. Checks
marked `suite=False` (SmolLM2 on all 872 SST-2 dev rows, ~2 min) run here
only.

  .venv/bin/python bench/parity_checks.py                # measure all
  .venv/bin/python bench/parity_checks.py --only=t5_,decoder_
  .venv/bin/python bench/parity_checks.py --render       # stored rows only

`--only` (name prefixes) measures a subset and keeps the other stored rows.
Exits with status 1 if a measured value breaks its bound.
"""

import os
import sys

if "jax" in sys.modules:
  raise RuntimeError("bench/parity_checks.py must set XLA_FLAGS before jax.")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import datetime  # pylint: disable=g-import-not-at-top
import functools  # pylint: disable=g-import-not-at-top
import json  # pylint: disable=g-import-not-at-top
import pathlib  # pylint: disable=g-import-not-at-top
import platform  # pylint: disable=g-import-not-at-top
import time  # pylint: disable=g-import-not-at-top
from typing import Any, Callable  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import markdown_section  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_jax.data import root as data_root_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_jax.testing import parity_checks as pc  # pylint: disable=g-import-not-at-top,wrong-import-position

OUT = ROOT / "bench" / "results" / "parity" / "parity_checks.json"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
BEGIN = "<!-- parity_checks.py:begin -->"
END = "<!-- parity_checks.py:end -->"
TESTS = {  # Name prefix -> the test asserting the bound.
    "t5_score": "tests/scoring_test.py",
    "t5_": "tests/parity/t5_reference_test.py",
    "decoder_": "tests/decoder/decoder_parity_test.py",
    "smollm2_sst2_dev": "bench/parity_checks.py only",
    "smollm2_": "tests/decoder/smollm2_parity_test.py",
}


class _SmolLM2Runs:
  """Both SmolLM2 models, loaded once, and the SST-2 measurements."""

  @functools.cached_property
  def models(self):
    return pc.SmolLM2(), pc.smollm2_reference()

  @functools.cached_property
  def dev(self) -> list[tuple[int, str]]:
    return pc.sst2_dev_rows(data_root_lib.data_root())

  @functools.cached_property
  def logits(self) -> list[dict[str, Any]]:
    return pc.smollm2_logits(*self.models, self.dev)

  @functools.cached_property
  def sst2_64(self) -> dict[str, Any]:
    return pc.smollm2_sst2(*self.models, self.dev[:64])

  @functools.cached_property
  def sst2_all(self) -> dict[str, Any]:
    return pc.smollm2_sst2(*self.models, self.dev)


def _measures() -> dict[str, Callable[[], float]]:
  smol = _SmolLM2Runs()

  def t5_score(style):
    got = pc.t5_label_scores(style)
    return pc.max_abs_diff(got["scores"], got["expected"])

  def logits_rel():
    rows = smol.logits
    if not all(r["same_argmax"] for r in rows):
      raise AssertionError(f"argmax differs from transformers: {rows}")
    return max(r["rel"] for r in rows)

  out = {}
  for style in ("t5_1_0", "t5_1_1"):
    out[f"t5_logits_{style}"] = functools.partial(
        lambda s: pc.max_abs_diff(*pc.t5_logits(s)), style)
    out[f"t5_encoder_{style}"] = functools.partial(
        lambda s: pc.max_abs_diff(*pc.t5_encoder(s)[::2]), style)
    out[f"t5_score_{style}"] = functools.partial(t5_score, style)
  out["t5_logits_long"] = lambda: pc.max_abs_diff(*pc.t5_long_logits())
  out["t5_bf16"] = lambda: pc.max_abs_diff(*pc.t5_bf16_logits())
  for name in pc.decoder_configs():
    out[f"decoder_logits_{name}"] = functools.partial(
        lambda n: max(pc.decoder_logits_diff(n, side)
                      for side in ("right", "left")), name)
  out["smollm2_logits"] = logits_rel
  out["smollm2_sst2_margin"] = lambda: smol.sst2_64["margin_diff"]
  out["smollm2_sst2_disagree"] = lambda: smol.sst2_64["disagree"]
  out["smollm2_sst2_correct"] = lambda: smol.sst2_64["correct"]
  out["smollm2_sst2_dev_disagree"] = lambda: smol.sst2_all["disagree"]
  out["smollm2_sst2_dev_margin"] = lambda: smol.sst2_all["margin_diff"]
  out["smollm2_sst2_dev_correct"] = lambda: smol.sst2_all["correct"]
  if set(out) != set(pc.CHECKS):
    raise AssertionError(f"unmeasured checks: {set(pc.CHECKS) ^ set(out)}")
  return out


def _test_of(name: str) -> str:
  return next(test for prefix, test in TESTS.items()
              if name.startswith(prefix))


def _asserted(check: pc.Check) -> str:
  return f"== {check.bound:g}" if check.exact else f"<= {check.bound:g}"


def _row(name: str, value: float, seconds: float) -> dict[str, Any]:
  """A stored row: the measured value, with the check's current text and
  bound (so `--render` after a bound change re-judges the stored value)."""
  check = pc.CHECKS[name]
  return {"check": name, "what": check.what, "setting": check.setting,
          "metric": check.metric, "value": value,
          "asserted": _asserted(check), "passes": pc.passes(name, value),
          "shows": check.shows, "test": _test_of(name), "seconds": seconds}


def measure(names: list[str]) -> list[dict[str, Any]]:
  """One stored row per check in `names`, in `pc.CHECKS` order."""
  measures = _measures()
  rows = []
  for name in names:
    start = time.time()
    value = measures[name]()
    value = int(value) if pc.CHECKS[name].exact else float(value)
    rows.append(_row(name, value, round(time.time() - start, 1)))
    print(f"{name}: {value:g} ({rows[-1]['asserted']}, "
          f"{'ok' if rows[-1]['passes'] else 'FAILS'})", flush=True)
  return rows


def _hardware() -> str:
  return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def _versions() -> dict[str, str]:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  return {"jax": jax.__version__, "torch": torch.__version__,
          "transformers": transformers.__version__}


def _value(row: dict[str, Any]) -> str:
  if row["metric"].startswith("correct rows of "):
    n = int(row["metric"].rsplit(" ", 1)[1])
    return f"{row['value']} / {n} ({100 * row['value'] / n:.2f}%)"
  return f"{row['value']:.2e}" if isinstance(row["value"], float) else str(
      row["value"])


def render(record: dict[str, Any]) -> str:
  """The generated Markdown section from the stored record."""
  lines = [BEGIN, "", "| what | setting | metric | measured | bound "
           "(asserted by) | shows |", "|---|---|---|---|---|---|"]
  for row in record["rows"]:
    flag = "" if row["passes"] else " **(breaks its bound)**"
    lines.append(f"| {row['what']} | {row['setting']} | {row['metric']} | "
                 f"{_value(row)}{flag} | {row['asserted']} "
                 f"({row['test']}) | {row['shows']} |")
  v = record["versions"]
  total = sum(r["seconds"] for r in record["rows"])
  script_only = sum(r["seconds"] for r in record["rows"]
                    if not pc.CHECKS[r["check"]].suite)
  lines += ["", f"Measured {record['date']} on {record['hardware']} with 8 "
            f"fake devices (the suite's setting), jax {v['jax']}, torch "
            f"{v['torch']}, transformers {v['transformers']}: "
            f"`.venv/bin/python bench/parity_checks.py`, {total:.0f} s of "
            f"measuring on shared cores, {script_only:.0f} s of it for the "
            "rows only this script checks (rows in "
            "bench/results/parity/parity_checks.json).", "", END]
  return "\n".join(lines)


def write_markdown(record: dict[str, Any]) -> None:
  body = render(record).removeprefix(BEGIN).removesuffix(END)
  markdown_section.replace_section(RESULTS_MD, BEGIN, END, body)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="",
                      help="comma-separated check name prefixes")
  parser.add_argument("--render", action="store_true")
  args = parser.parse_args(argv)
  if args.render:  # Stored values, the checks' current text and bounds.
    record = json.loads(OUT.read_text())
    record["rows"] = [_row(r["check"], r["value"], r["seconds"])
                      for r in record["rows"] if r["check"] in pc.CHECKS]
    OUT.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
  else:
    prefixes = [p for p in args.only.split(",") if p]
    names = [n for n in pc.CHECKS
             if not prefixes or any(n.startswith(p) for p in prefixes)]
    if not names:
      raise SystemExit(f"--only={args.only}: no check name starts with it")
    old = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    start = time.time()
    fresh = {r["check"]: r for r in measure(names)}
    kept = {r["check"]: r for r in old if r["check"] in pc.CHECKS}
    rows = [fresh.get(n) or kept[n] for n in pc.CHECKS
            if n in fresh or n in kept]
    record = {"command": " ".join(["bench/parity_checks.py", *(
        argv if argv is not None else sys.argv[1:])]),
              "date": datetime.date.today().isoformat(),
              "hardware": _hardware(), "versions": _versions(),
              "wall_s": round(time.time() - start, 1), "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
  write_markdown(record)
  failed = [r["check"] for r in record["rows"] if not r["passes"]]
  if failed:
    print(f"checks breaking their bound: {', '.join(failed)}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
