"""MLflow -> pandas. ``runs_frame``: one row per run (params, tags, status); ``history_frame``:
long-form metric histories (run_id, key, step, value)."""

from __future__ import annotations

import pandas as pd

from bench.core.errors import BenchError, did_you_mean
from bench.tracking import client, resolve_uri


def runs_frame(
    experiment: str, tracking_uri: str | None = None, filter_string: str = ""
) -> pd.DataFrame:
    """Runs of ``experiment``, optionally selected by an MLflow filter on tags and params, e.g.
    ``tags.`sweep.id` = 'ab12cd34ef56'`` or ``params.algorithm = 'gvpo'``."""
    uri = resolve_uri(tracking_uri)
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in c.search_experiments()]
        raise BenchError(
            f"no experiment '{experiment}' in {uri}" + did_you_mean(experiment, names or ["(none)"])
        )
    rows = []
    token = None
    while True:
        try:
            page = c.search_runs(
                [exp.experiment_id], filter_string, max_results=1000, page_token=token
            )
        except Exception as e:  # MlflowException for a malformed filter
            if not filter_string:
                raise
            raise BenchError(f"bad --filter '{filter_string}': {str(e).splitlines()[0]}") from None
        for r in page:
            row = {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "status": r.info.status,
                "start_time": r.info.start_time,
            }
            row |= {f"params.{k}": v for k, v in r.data.params.items()}
            row |= {f"tags.{k}": v for k, v in r.data.tags.items()}
            row |= {f"metrics.{k}": v for k, v in r.data.metrics.items()}
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)


def history_frame(
    run_ids: list[str], keys: list[str], tracking_uri: str | None = None
) -> pd.DataFrame:
    c = client(resolve_uri(tracking_uri))
    rows = [
        {"run_id": rid, "key": key, "step": m.step, "value": m.value}
        for rid in run_ids
        for key in keys
        for m in c.get_metric_history(rid, key)
    ]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
