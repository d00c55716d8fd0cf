"""The harness's tasks as lm-evaluation-harness tasks, run through lm-eval's Python API.

``export`` writes, for each task, its eval rows as a JSONL file and a YAML task
(``dataset_path: json`` with absolute ``data_files``, as lm-eval resolves relative paths against the
working directory) plus a ``utils.py`` whose ``process_results`` scores with the task's own
``is_correct``, so both harnesses apply the same checker. Greedy decoding, same token budget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

YAML = """task: {lm_name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {max_new_tokens}
  do_sample: false
process_results: !function utils_{name}.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
"""

UTILS = """from tasks import TASKS

_cls = TASKS.get({name!r})
_task = _cls(_cls.Config(**{settings!r}))


def process_results(doc, results):
    return {{"acc": float(bool(_task.is_correct(results[0], doc)))}}
"""


def export(task, out_dir: Path, limit: int, max_new_tokens: int) -> str:
    """Write the lm-eval task for ``task`` (an instance); returns its lm-eval name."""
    import dataclasses

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = task.eval_rows()[: limit or None]
    data = (out_dir / f"{task.name}.jsonl").resolve()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lm_name = f"gvpo_bench_{task.name}"
    (out_dir / f"{task.name}.yaml").write_text(
        YAML.format(
            lm_name=lm_name,
            data=data,
            max_new_tokens=max_new_tokens,
            name=task.name,
            version=task.version,
        )
    )
    settings = dataclasses.asdict(task.cfg)
    (out_dir / f"utils_{task.name}.py").write_text(UTILS.format(name=task.name, settings=settings))
    return lm_name


def evaluate_with_lmeval(
    model_dir: str, tasks: list, out_dir: Path, limit: int, max_new_tokens: int
) -> dict[str, float]:
    """Greedy accuracy per task from lm-eval's ``simple_evaluate`` on a local checkpoint."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    names = {export(t, out_dir, limit, max_new_tokens): t.name for t in tasks}
    result = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32,device=cpu",
        tasks=list(names),
        task_manager=TaskManager(include_path=str(out_dir)),
        batch_size=16,
        limit=limit or None,
        log_samples=True,
    )
    metrics = {f"lmeval/{names[lm]}/accuracy": r["acc,none"] for lm, r in result["results"].items()}
    rows = {
        names[lm]: [s["acc"] for s in sorted(samples, key=lambda s: s["doc_id"])]
        for lm, samples in result["samples"].items()
    }
    return metrics, rows
