"""The CLI: user mistakes give one line naming the closest valid choice and exit code 2."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bench.app.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "smoke", "algorithm=gpvo"], "did you mean 'gvpo'?"),
        (["run", "smoke", "task=arithmetik"], "did you mean 'arithmetic'?"),
        (["run", "smok"], "unknown preset 'smok' (did you mean 'smoke'?)"),
        (
            ["run", "smoke", "train.stepz=3"],
            "unknown config key 'train.stepz' in 'train' (did you mean 'steps'?)",
        ),
        (["compare", "smoke", "--algorithms", "gvpo,drgrpo"], "did you mean 'dr_grpo'?"),
        (["report", "no-such-experiment"], "no experiment 'no-such-experiment'"),
    ],
)
def test_bad_input_one_line_exit_2(args, expected, tracking_uri):
    result = runner.invoke(
        app, [*args] + (["--tracking-uri", tracking_uri] if args[0] == "report" else [])
    )
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert expected in out and "Traceback" not in result.output


def test_real_process_has_no_traceback():
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.app.cli",
            "run",
            "smoke",
            "algorithms.grpo.loss_agg=token_mean",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert (
        "(did you mean 'token-mean'?)" in lines[0]
        and "override 'algorithms.grpo.loss_agg=token_mean'" in lines[0]
    )


def test_list_shows_registries():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("gvpo", "grpo", "dr_grpo", "arithmetic", "smoke"):
        assert name in result.output
