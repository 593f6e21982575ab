"""The scoring CLI on the real SmolLM2-135M GGUF: rank classification."""

import json


from prompt_jax import score_cli as score


def test_smollm2_scores_rank_the_right_answer(tmp_path):
  lines = [{"inputs": "The capital of France is", "targets": t}
           for t in (" Paris", " London", " banana")]
  lines.append({"inputs": "2 + 2 =", "targets": [220, 36]})  # ids as given
  src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in lines))
  records = score.run(score.build_parser().parse_args([
      "--backbone=smollm2", f"--input_file={src}", f"--output_file={out}",
      "--batch_size=4", "--mesh=1,1"]))
  scores = [r["score"] for r in records]
  print("SmolLM2 CLI scores:", scores)
  assert scores[0] > scores[1] > scores[2], scores
  assert len(records[0]["token_scores"]) == 1  # " Paris": one token, no EOS
  assert len(records[3]["token_scores"]) == 2
  assert [json.loads(x)["score"] for x in out.read_text().splitlines()] == (
      scores)


def test_decoder_backbone_detection(tmp_path):
  assert score._is_decoder("smollm2")  # pylint: disable=protected-access
  assert score._is_decoder("/x/m.gguf")  # pylint: disable=protected-access
  (tmp_path / "config.json").write_text('{"model_type": "t5"}')
  assert not score._is_decoder(str(tmp_path))  # pylint: disable=protected-access
  (tmp_path / "config.json").write_text('{"model_type": "llama"}')
  assert score._is_decoder(str(tmp_path))  # pylint: disable=protected-access
