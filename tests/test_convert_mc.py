"""`growjax convert-mc` (issue 31): hand-made rows in each public layout of HellaSwag,
ARC, PIQA and Winogrande (Hugging Face parquet and the authors' JSON lines) -> the
examples lm-evaluation-harness's task YAMLs build, through the console entry point."""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from growjax import cli

HELLASWAG = {"ind": 4, "activity_label": "Removing ice from car",
             "ctx_a": "Then, the man writes over the snow covering the window of a car.",
             "ctx_b": "then", "ctx": "unused", "split": "val",
             "endings": [", the man adds wax to the windshield.",
                         "Clean the glass [step] well. [title] Wipe it dry.",
                         ", the man continues removing the snow.",
                         ", the man starts the car."],
             "label": "2"}
HELLASWAG_EXAMPLE = {
    "context": "Removing ice from car: Then, the man writes over the snow covering the "
               "window of a car. Then",
    "choices": [" , the man adds wax to the windshield.", " Clean the glass well.. Wipe it dry.",
                " , the man continues removing the snow.", " , the man starts the car."],
    "gold": 2}
ARC_HF = {"id": "Mercury_7175875", "question": "Which is a renewable resource?",
          "choices": {"text": ["coal", "wind", "oil"], "label": ["A", "B", "C"]},
          "answerKey": "B"}
ARC_ORIGINAL = {"id": "Mercury_7175875", "answerKey": "2",
                "question": {"stem": "Which is a renewable resource?",
                             "choices": [{"text": "coal", "label": "1"},
                                         {"text": "wind", "label": "2"},
                                         {"text": "oil", "label": "3"}]}}
ARC_EXAMPLE = {"context": "Question: Which is a renewable resource?\nAnswer:",
               "choices": [" coal", " wind", " oil"], "gold": 1}
PIQA = {"goal": "To cool a drink fast", "sol1": "put it in the oven",
        "sol2": "put it in ice water"}
PIQA_EXAMPLE = {"context": "Question: To cool a drink fast\nAnswer:",
                "choices": [" put it in the oven", " put it in ice water"], "gold": 1}
WINOGRANDE = {"sentence": "The trophy doesn't fit into the suitcase because the _ is too "
                          "small.", "option1": "trophy", "option2": "suitcase", "answer": "2"}
WINOGRANDE_EXAMPLE = {
    "context": "The trophy doesn't fit into the suitcase because the ",
    "contexts": ["The trophy doesn't fit into the suitcase because the trophy",
                 "The trophy doesn't fit into the suitcase because the suitcase"],
    "choices": [" is too small.", " is too small."], "gold": 1}


def convert(tmp_path, *args):
  saved = sys.argv
  sys.argv = ["growjax", "convert-mc", *args, "--out", str(tmp_path / "out.jsonl")]
  try:
    code = cli.main()
  finally:
    sys.argv = saved
  out = tmp_path / "out.jsonl"
  rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else None
  return code, rows


def parquet(path, rows):
  pq.write_table(pa.Table.from_pylist(rows), str(path))
  return str(path)


def jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.mark.parametrize("name,rows,example", [
    ("hellaswag", [HELLASWAG], HELLASWAG_EXAMPLE),
    ("arc", [ARC_HF], ARC_EXAMPLE),
    ("piqa", [dict(PIQA, label=1)], PIQA_EXAMPLE),
    ("winogrande", [WINOGRANDE], WINOGRANDE_EXAMPLE)])
@pytest.mark.parametrize("layout", ["parquet", "jsonl"])
def test_each_task_converts_as_lm_eval_builds_it(name, rows, example, layout, tmp_path, capsys):
  path = (parquet if layout == "parquet" else jsonl)(tmp_path / f"in.{layout}", rows * 2)
  code, examples = convert(tmp_path, "--input", path)   # --format auto: from the fields
  assert code == 0 and examples == [example, example]
  assert capsys.readouterr().out.startswith(f"wrote 2 {name} examples -> ")


def test_the_authors_own_layouts(tmp_path, capsys):
  code, examples = convert(tmp_path, "--input", jsonl(tmp_path / "arc.jsonl", [ARC_ORIGINAL]))
  assert code == 0 and examples == [ARC_EXAMPLE]
  # PIQA's original valid.jsonl keeps its labels in valid-labels.lst.
  (tmp_path / "labels.lst").write_text("1\n0\n")
  code, examples = convert(tmp_path, "--input", jsonl(tmp_path / "piqa.jsonl", [PIQA, PIQA]),
                           "--labels", str(tmp_path / "labels.lst"), "--format", "piqa")
  assert code == 0 and examples == [PIQA_EXAMPLE, dict(PIQA_EXAMPLE, gold=0)]


def test_unlabelled_rows_and_unknown_layouts_are_one_line(tmp_path, capsys):
  path = jsonl(tmp_path / "test.jsonl", [HELLASWAG, dict(HELLASWAG, label="")])
  code, _ = convert(tmp_path, "--input", path)
  assert code == 2 and capsys.readouterr().err.strip() == (
      f"growjax convert-mc: --input {path} row 2: not a hellaswag row (no label (a hidden "
      f"test split?)) — give the task's labelled train / validation files (--format to "
      f"choose)")
  path = jsonl(tmp_path / "other.jsonl", [{"text": "x"}])
  code, _ = convert(tmp_path, "--input", path)
  assert code == 2 and capsys.readouterr().err.strip() == (
      f"growjax convert-mc: --input {path}: rows with the fields ['text'] are none of "
      f"hellaswag, arc, piqa, winogrande — give the task's own files, or --format to name "
      f"one")
