"""`growjax convert-mc`: the standard zero-shot tasks' public files -> growjax's
multiple-choice JSONL (`growjax.interop.evaluate`: context, choices, gold).

Reads the rows as the Hugging Face datasets publish them (parquet) or as their authors
did (JSON lines), and builds each example as lm-evaluation-harness's task YAML does, so
`growjax eval` scores what lm-eval scores:

- HellaSwag (Rowan/hellaswag; rowanz's jsonl): `activity_label: ctx_a Ctx_b`, the
  endings cleaned of WikiHow's `[title]` / `[header]` marks; label.
- ARC Easy / Challenge (allenai/ai2_arc; the ARC jsonl with question.stem):
  `Question: ...\nAnswer:`, the choices' texts; answerKey.
- PIQA (ybisk/piqa; the original jsonl with its labels file): `Question: goal\nAnswer:`,
  sol1 / sol2; label.
- Winogrande (allenai/winogrande): lm-eval's partial scoring: each option fills the blank
  in its own context (`contexts`), and the choice scored is the rest of the sentence,
  the same for both; answer 1 / 2.

It downloads nothing: give it the files. Rows without a label (the tasks' hidden test
splits) are refused, naming the file and row.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

from etils import epath


def _hellaswag_text(text: str) -> str:
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def hellaswag(row: dict) -> dict:
  ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize() if "ctx_a" in row else row["ctx"]
  return {"context": _hellaswag_text(row["activity_label"] + ": " + ctx),
          "choices": [" " + _hellaswag_text(e) for e in row["endings"]],
          "gold": _label(row["label"])}


def arc(row: dict) -> dict:
  question, choices = row["question"], row.get("choices")
  if isinstance(question, dict):   # the ARC jsonl: question.stem, question.choices
    question, choices = question["stem"], {"text": [c["text"] for c in question["choices"]],
                                           "label": [c["label"] for c in question["choices"]]}
  labels = [str(x) for x in choices["label"]]
  key = str(row["answerKey"])
  if key not in labels:
    raise ValueError(f"answerKey {key!r} is not one of the choice labels {labels}")
  return {"context": f"Question: {question}\nAnswer:",
          "choices": [" " + t for t in choices["text"]], "gold": labels.index(key)}


def piqa(row: dict) -> dict:
  return {"context": f"Question: {row['goal']}\nAnswer:",
          "choices": [" " + row["sol1"], " " + row["sol2"]], "gold": _label(row["label"])}


def winogrande(row: dict) -> dict:
  sentence = row["sentence"]
  if "_" not in sentence:
    raise ValueError("the sentence has no blank '_'")
  blank = sentence.index("_")
  rest = " " + sentence[blank + 1:].strip()
  prefix = sentence[:blank]
  answer = str(row["answer"]).strip()
  if answer not in ("1", "2"):
    raise ValueError(f"answer {row['answer']!r} is not 1 or 2")
  return {"context": prefix, "contexts": [prefix + row["option1"], prefix + row["option2"]],
          "choices": [rest, rest], "gold": int(answer) - 1}


FORMATS: dict[str, Callable[[dict], dict]] = {
    "hellaswag": hellaswag, "arc": arc, "piqa": piqa, "winogrande": winogrande}
# The fields that tell each format's rows apart (`--format auto`).
_SIGNATURES = (("hellaswag", {"endings", "activity_label"}), ("arc", {"question", "answerKey"}),
               ("piqa", {"goal", "sol1", "sol2"}),
               ("winogrande", {"sentence", "option1", "option2"}))


def _label(value: Any) -> int:
  if value is None or (isinstance(value, str) and not value.strip()):
    raise ValueError("no label (a hidden test split?)")
  return int(value)


def detect(row: dict, path: str) -> str:
  for name, keys in _SIGNATURES:
    if keys <= set(row):
      return name
  raise ValueError(f"--input {path}: rows with the fields {sorted(row)} are none of "
                   f"{', '.join(FORMATS)} — give the task's own files, or --format to name "
                   f"one")


def read_rows(path: str) -> list[dict]:
  """The rows of a .parquet, .jsonl or .json (a list of objects) file."""
  p = epath.Path(path)
  if not p.is_file():
    raise ValueError(f"--input {path}: no such file — give the task's .parquet or .jsonl")
  if p.suffix == ".parquet":
    import pyarrow.parquet as pq   # noqa: PLC0415
    with p.open("rb") as f:
      return pq.read_table(f).to_pylist()
  text = p.read_text()
  if p.suffix == ".json":
    rows = json.loads(text)
    return rows if isinstance(rows, list) else [rows]
  rows = []
  for n, line in enumerate(text.splitlines(), start=1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except ValueError:
        raise ValueError(f"--input {path}:{n}: not JSON — give one JSON object per line, or "
                         f"a .parquet file") from None
  return rows


def convert(inputs: list[str], out: str, fmt: str = "auto", labels: str = "",
            log=print) -> int:
  """Writes the examples of `inputs` (in order) to `out` as growjax MC JSONL; returns
  how many. `labels`: a file of one label per line (PIQA's original *-labels.lst)."""
  if fmt != "auto" and fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r} — choose auto or one of {', '.join(FORMATS)}")
  rows = [(path, n, row) for path in inputs for n, row in enumerate(read_rows(path), 1)]
  if not rows:
    raise ValueError(f"--input {','.join(inputs)} holds no row")
  if labels:
    values = [v.strip() for v in epath.Path(labels).read_text().splitlines() if v.strip()]
    if len(values) != len(rows):
      raise ValueError(f"--labels {labels} has {len(values)} labels for {len(rows)} rows — "
                       f"give the labels file of the same split")
    rows = [(p, n, dict(r, label=v)) for (p, n, r), v in zip(rows, values)]
  name = detect(rows[0][2], rows[0][0]) if fmt == "auto" else fmt
  examples = []
  for path, n, row in rows:
    try:
      examples.append(FORMATS[name](row))
    except (KeyError, TypeError, ValueError) as e:
      what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
      raise ValueError(f"--input {path} row {n}: not a {name} row ({what}) — give the "
                       f"task's labelled train / validation files (--format to choose)"
                       ) from None
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps(ex, ensure_ascii=False) + "\n")
  log(f"wrote {len(examples)} {name} examples -> {out}; evaluate with "
      f"`growjax eval --config CONFIG --checkpoint RUN --tasks {out}`")
  return len(examples)
