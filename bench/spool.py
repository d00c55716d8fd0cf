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

    def replay(self, client, reject=None) -> int:
        """Send the spooled calls in order; returns how many were sent. Raises on the first
        call that fails (the rest stay spooled). A line that is not a call raises too, unless
        ``reject(line_number, line, reason)`` takes it."""
        lines = self.path.read_text().splitlines()[1:]
        done = self._sent()
        sent = 0
        try:
            for i in range(done, len(lines)):
                try:
                    record = parse(lines[i])
                except ValueError as e:
                    if reject is None:
                        raise
                    reject(i + 2, lines[i], str(e))  # the file's line: after the header, from 1
                else:
                    call(client, self.run_id, record)
                    sent += 1
                done = i + 1
                _write(self.sent_path, str(done))
        except Exception:
            self.next_try = time.time() + self.wait_s
            self.wait_s = min(self.wait_s * 2, 30.0)
            raise
        self.path.unlink()
        self.sent_path.unlink(missing_ok=True)
        return sent


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# each spooled call and the fields it needs: (name, type, length of each item or None)
OPS = {
    "log_batch": (("metrics", list, 4), ("params", list, 2), ("tags", list, 2)),
    "log_text": (("text", str, None), ("name", str, None)),
    "set_terminated": (("status", str, None),),
    "update_run": (("status", str, None),),
}


def parse(line: str) -> dict:
    """One spooled call, checked before it is sent; ValueError says what is wrong."""
    try:
        record = json.loads(line)
    except ValueError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(record, dict) or record.get("op") not in OPS:
        raise ValueError(f"not a spooled call (an object with op one of {', '.join(OPS)})")
    for name, kind, width in OPS[record["op"]]:
        value = record.get(name, [] if kind is list else None)
        items_ok = width is None or all(isinstance(x, list) and len(x) == width for x in value)
        if not isinstance(value, kind) or not items_ok:
            raise ValueError(f"{record['op']} with a bad or missing '{name}'")
    return record


def header(path: Path) -> dict:
    """The first line of a spool file: where its calls go; ValueError if it is not one."""
    try:
        first = json.loads(path.read_text().splitlines()[0])
        assert first["op"] == "header" and first["uri"] and first["run_id"]
        return first
    except (IndexError, ValueError, KeyError, TypeError, AssertionError):
        raise ValueError("not a spool header (op header, uri, run_id)") from None


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


def sync_all(on_progress=None) -> tuple[list[tuple[str, int, str | None]], list[str]]:
    """Replay every spool under the results folder: ((run id, lines done, error or None) per
    spool, ``FILE:LINE: reason`` per line that is not a call). A line that is not a call is
    not sent: it goes to ``<run_id>.rejected`` beside the spool, and the good calls around it
    are sent in order."""
    from bench.tracking import client

    out, rejected = [], []
    for path in sorted(spool_dir().glob("*.jsonl")) if spool_dir().is_dir() else []:
        try:
            head = header(path)
        except ValueError as e:
            out.append((path.stem, 0, f"{path}:1: {e}"))
            continue
        spool = Spool(head["uri"], head["run_id"])

        def reject(number: int, line: str, reason: str, path=path, spool=spool) -> None:
            rejected.append(f"{path}:{number}: {reason}")
            with spool_dir().joinpath(f"{spool.run_id}.rejected").open("a") as f:
                f.write(line + "\n")

        try:
            out.append((spool.run_id, spool.replay(client(head["uri"]), reject), None))
        except Exception as e:
            out.append((spool.run_id, 0, (str(e).strip().splitlines() or [""])[0][:200]))
        if on_progress:
            on_progress()
    return out, rejected
