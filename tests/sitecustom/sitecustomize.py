"""Python imports this module at start-up when this folder is on PYTHONPATH: a test puts it
there to pause processes it does not start itself (the ranks torchrun starts) at a loop event,
as tests/pause.py does for a process it starts (BENCH_TEST_PAUSE=EVENT@STEP, and
BENCH_TEST_PAUSE_RANK=R for rank R only)."""

import os

if os.environ.get("BENCH_TEST_PAUSE") and os.environ.get("RANK", "0") == os.environ.get(
    "BENCH_TEST_PAUSE_RANK", "0"
):
    from tests.pause import pause_at

    event, _, step = os.environ["BENCH_TEST_PAUSE"].partition("@")
    pause_at(event, int(step))
