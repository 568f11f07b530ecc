"""brainprop.workflow's Snakemake speed-ups: what they change in Snakemake and what they keep."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

from snakemake.scheduling.job_scheduler import JobScheduler

from brainprop.workflow import speed_up_planning


class _Input(str):
    """A job input as the scheduler sees it (async exists and size), counting the stats."""

    asked: list = []

    async def exists(self) -> bool:
        return Path(self).exists()

    async def size(self) -> int:
        _Input.asked.append(str(self))
        return Path(self).stat().st_size


def test_the_scheduler_stats_each_ready_jobs_input_once(tmp_path):
    speed_up_planning([])
    a, b = _Input(tmp_path / "a"), _Input(tmp_path / "b")
    Path(a).write_bytes(b"x" * 10)
    scheduler = SimpleNamespace(_input_sizes={})
    jobs = [SimpleNamespace(input=[a, b]), SimpleNamespace(input=[a])]
    asyncio.run(JobScheduler.update_input_sizes(scheduler, jobs))
    assert scheduler._input_sizes == {a: 10, b: None}
    assert _Input.asked == [a]
    Path(b).write_bytes(b"y" * 3)  # a missing input that appears later is asked again; a known one is not
    asyncio.run(JobScheduler.update_input_sizes(scheduler, jobs))
    assert scheduler._input_sizes == {a: 10, b: 3}
    assert _Input.asked == [a, b]
    speed_up_planning([])  # a second call does not wrap the method again
    assert getattr(JobScheduler.update_input_sizes, "_brainprop", False)
