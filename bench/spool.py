"""Riding out a tracking server outage: what a run cannot send is spooled, in order, to
``<results>/spool/<run_id>.jsonl`` and replayed once, in order, when the server answers again
(tried with a backoff while the run goes on) or later by ``bench sync``. Training never waits
on the server beyond MLflow's own retry window (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_TIMEOUT``). One console line when an outage starts, one when it ends.

Each line of a spool file is one MLflow call (``log_batch``, ``log_text``, ``set_terminated``,
``update_run``); ``<run_id>.sent`` counts the lines already replayed, updated after each, so a
replay that is itself interrupted neither repeats nor skips a call.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.core.paths import results_dir
from bench.core.progress import console


def spool_dir() -> Path:
    return results_dir() / "spool"


def is_server(uri: str) -> bool:
    """Only a tracking server can be away for a while; a SQLite file's errors are real."""
    return uri.startswith(("http://", "https://"))


class Spool:
    """The calls of one run that have not reached its tracking server yet."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.path = spool_dir() / f"{run_id}.jsonl"
        self.sent_path = spool_dir() / f"{run_id}.sent"
        self.wait_s = 5.0  # before the next replay attempt; doubles up to 30 s
        self.next_try = 0.0

    @property
    def active(self) -> bool:
        return self.path.exists()

    def _sent(self) -> int:
        return int(self.sent_path.read_text()) if self.sent_path.exists() else 0

    def add(self, op: str, **kwargs) -> None:
        if not self.active:
            spool_dir().mkdir(parents=True, exist_ok=True)
            header = {"op": "header", "uri": self.uri, "run_id": self.run_id}
            self.path.write_text(json.dumps(header) + "\n")
            self.next_try = time.time() + self.wait_s
        with self.path.open("a") as f:
            f.write(json.dumps({"op": op, **kwargs}) + "\n")

    def due(self) -> bool:
        return self.active and time.time() >= self.next_try

    def replay(self, client) -> int:
        """Send the spooled calls in order; returns how many were sent. Raises on the first
        call that fails (the rest stay spooled)."""
        lines = self.path.read_text().splitlines()[1:]
        done = first = self._sent()
        try:
            for i in range(done, len(lines)):
                call(client, self.run_id, json.loads(lines[i]))
                done = i + 1
                _write(self.sent_path, str(done))
        except Exception:
            self.next_try = time.time() + self.wait_s
            self.wait_s = min(self.wait_s * 2, 30.0)
            raise
        self.path.unlink()
        self.sent_path.unlink(missing_ok=True)
        return len(lines) - first


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def call(client, run_id: str, record: dict) -> None:
    """One spooled MLflow call."""
    from mlflow.entities import Metric, Param, RunTag

    op = record["op"]
    if op == "log_batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, step) for k, v, ts, step in record.get("metrics", [])],
            params=[Param(k, v) for k, v in record.get("params", [])],
            tags=[RunTag(k, v) for k, v in record.get("tags", [])],
        )
    elif op == "log_text":
        client.log_text(run_id, record["text"], record["name"])
    elif op == "set_terminated":
        client.set_terminated(run_id, status=record["status"])
    elif op == "update_run":
        client.update_run(run_id, status=record["status"])
    else:
        raise ValueError(f"unknown spooled call {op!r}")


class Guard:
    """Sends a run's MLflow calls, or spools them while the tracking server is away."""

    def __init__(self, client, uri: str, run_id: str):
        self.client, self.uri, self.run_id = client, uri, run_id
        self.spool = Spool(uri, run_id)

    def __call__(self, op: str, **record) -> None:
        if self.spool.due():
            self.try_replay()
        if self.spool.active:
            self.spool.add(op, **record)
            return
        try:
            call(self.client, self.run_id, {"op": op, **record})
        except Exception as e:
            if not is_server(self.uri):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            console.print(
                f"[yellow]tracking server {self.uri} unreachable ({first}): training goes on, "
                f"calls spooled to {self.spool.path}[/yellow]",
                highlight=False,
            )
            self.spool.add(op, **record)

    def try_replay(self) -> bool:
        """Replay the spool if the server answers; True when nothing is left. A server is asked
        for /health first (2 s): an attempt during the outage does not wait out MLflow's own
        retry window."""
        if not self.spool.active:
            return True
        if is_server(self.uri) and not healthy(self.uri):
            self.spool.next_try = time.time() + self.spool.wait_s
            return False
        try:
            n = self.spool.replay(self.client)
        except Exception:
            return False
        console.print(f"tracking server {self.uri} back: {n} spooled calls sent", highlight=False)
        return True

    def close(self) -> None:
        """At the end of the run: a last replay, else say how to send the rest later."""
        if self.spool.active and not self.try_replay():
            console.print(
                f"[yellow]{self.spool.path} keeps this run's last calls: `bench sync` sends them "
                "when the tracking server is back[/yellow]",
                highlight=False,
            )


def healthy(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def sync_all(on_progress=None) -> list[tuple[str, int, str | None]]:
    """Replay every spool under the results folder: (run id, calls sent, error or None)."""
    from bench.tracking import client

    out = []
    for path in sorted(spool_dir().glob("*.jsonl")) if spool_dir().is_dir() else []:
        header = json.loads(path.read_text().splitlines()[0])
        spool = Spool(header["uri"], header["run_id"])
        try:
            out.append((spool.run_id, spool.replay(client(header["uri"])), None))
        except Exception as e:
            out.append((spool.run_id, 0, (str(e).strip().splitlines() or [""])[0][:200]))
        if on_progress:
            on_progress()
    return out
