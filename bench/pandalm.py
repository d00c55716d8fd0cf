"""PandaLM's human-labelled pairs (Wang et al. 2023) as an extra held-out check for reward models.

Each row has an instruction (+ input), two responses and three annotators (0 tie, 1 or 2 for the
better response). A pair counts when at least two annotators agree on 1 or 2; ties and splits are
dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tasks" / "data" / "pandalm" / "testset-v1.json"


def majority(row: dict) -> int | None:
    label, votes = Counter([row["annotator1"], row["annotator2"], row["annotator3"]]).most_common(
        1
    )[0]
    return label if votes >= 2 and label in (1, 2) else None


def pandalm_pairs(path: Path = DATA) -> list[dict]:
    """Rows prompt / chosen / rejected from the human majority (ties and splits dropped)."""
    pairs = []
    for row in json.loads(path.read_text()):
        label = majority(row)
        if label is None:
            continue
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "") + "\n\n"
        r1, r2 = str(row["response1"]), str(row["response2"])  # 6 responses are JSON booleans
        better, worse = (r1, r2) if label == 1 else (r2, r1)
        pairs.append({"prompt": prompt, "chosen": better, "rejected": worse})
    return pairs
