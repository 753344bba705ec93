"""Time-boxed video decoding in worker processes.

decord can hang or crash on odd files, and neither can be interrupted from
inside the process doing the decoding. So each decode runs in a worker process
(``spawn``: never fork a process holding torch/decord state) that talks to the
pool over its own pipe. The pool watches every busy worker's deadline and
process sentinel: a job over time gets its worker killed and replaced, a worker
that dies is replaced, and either way the job yields an outcome with a reason
instead of stopping the run.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from aam_search.data.clips import ClipSettings
from aam_search.data.video import DecodedVideo

_READY = "ready"
_STARTUP_TIMEOUT_S = 120.0  # importing torch + decord in a fresh process; generous for slow disks
_MAX_FAILED_STARTS = 3
_JOIN_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class DecodeJob:
    index: int  # caller's id for the item (e.g. manifest row)
    path: str
    split: str
    seed: int


@dataclass
class DecodeOutcome:
    job: DecodeJob
    video: DecodedVideo | None  # None when decoding failed
    reason: str | None  # why it failed, None on success
    seconds: float  # wall time from dispatch to result


def _worker_main(conn: Connection, settings: ClipSettings, num_threads: int) -> None:
    """Worker loop: receive (seq, job), reply (seq, video, reason) until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it terminates us
    import torch  # before decord, always

    torch.set_num_threads(1)  # one decode per process; avoid oversubscribing cores
    import decord  # noqa: F401  (imported now so the first job's time-box does not include it)

    from aam_search.data.video import VideoDecodeError, decode_video

    conn.send(_READY)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        seq, job = message
        try:
            video = decode_video(job.path, job.split, settings, num_threads=num_threads, seed=job.seed)
            reply = (seq, video, None)
        except VideoDecodeError as exc:
            reply = (seq, None, exc.reason)
        except Exception as exc:  # a bug or an odd file must not take the worker down
            reply = (seq, None, f"decode failed: {type(exc).__name__}: {exc}"[:300])
        conn.send(reply)


class _Worker:
    """One worker process, its pipe, and the job it is running."""

    def __init__(self, context, settings: ClipSettings, num_threads: int) -> None:
        self.conn, child_conn = context.Pipe(duplex=True)
        self.process: BaseProcess = context.Process(
            target=_worker_main, args=(child_conn, settings, num_threads), daemon=True, name="aam-decode"
        )
        self.process.start()
        child_conn.close()  # the parent keeps only its end, so EOF is seen when the child dies
        self.started_at = time.monotonic()
        self.ready = False
        self.task: tuple[int, DecodeJob] | None = None
        self.task_started_at = 0.0

    def dispatch(self, seq: int, job: DecodeJob) -> None:
        self.conn.send((seq, job))
        self.task = (seq, job)
        self.task_started_at = time.monotonic()

    def stop(self, *, graceful: bool) -> int | None:
        """End the process (politely if idle and ``graceful``), reap it, return its exit code."""
        if graceful and self.ready and self.task is None and self.process.is_alive():
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(_JOIN_TIMEOUT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_JOIN_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()  # reaps: no zombie left behind
        self.conn.close()
        exit_code = self.process.exitcode
        self.process.close()
        return exit_code


class DecodePool:
    """Decode videos in ``workers`` processes, each job limited to ``timeout_s`` seconds."""

    def __init__(
        self,
        settings: ClipSettings,
        *,
        workers: int = 1,
        timeout_s: float = 60.0,
        num_threads: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.settings = settings
        self.timeout_s = timeout_s
        self.num_threads = num_threads
        self._context = multiprocessing.get_context("spawn")
        self._failed_starts = 0
        self._closed = False
        self._workers: list[_Worker] = [self._start_worker() for _ in range(workers)]

    # -- public -------------------------------------------------------------------------------

    def imap(self, jobs: Iterable[DecodeJob]) -> Iterator[DecodeOutcome]:
        """Decode ``jobs``, yielding one outcome per job in job order.

        At most ~2 x workers jobs are taken from ``jobs`` ahead of the one being yielded,
        so a long job list is never materialised and finished results stay few.
        """
        if self._closed:
            raise RuntimeError("DecodePool is closed")
        window = 2 * len(self._workers)
        job_iter = iter(jobs)
        exhausted = False
        seq = 0
        unyielded: deque[tuple[int, DecodeJob]] = deque()  # taken from jobs, in order
        unassigned: deque[tuple[int, DecodeJob]] = deque()  # not yet sent to a worker
        finished: dict[int, DecodeOutcome] = {}
        while True:
            while not exhausted and len(unyielded) < window:
                try:
                    job = next(job_iter)
                except StopIteration:
                    exhausted = True
                    break
                unyielded.append((seq, job))
                unassigned.append((seq, job))
                seq += 1
            if unyielded and unyielded[0][0] in finished:
                yield finished.pop(unyielded.popleft()[0])
                continue
            if not unyielded:
                return
            for worker in self._workers:
                if unassigned and worker.ready and worker.task is None:
                    worker.dispatch(*unassigned.popleft())
            self._wait_and_collect(finished)

    def close(self) -> None:
        """Stop every worker (killing busy ones) and reap them. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.stop(graceful=True)
        self._workers = []

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and tests)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- internals ----------------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        return _Worker(self._context, self.settings, self.num_threads)

    def _replace(self, worker: _Worker) -> int | None:
        exit_code = worker.stop(graceful=False)
        self._workers[self._workers.index(worker)] = self._start_worker()
        return exit_code

    def _wait_and_collect(self, finished: dict[int, DecodeOutcome]) -> None:
        """Block until some worker replies, dies, or passes a deadline; record job outcomes."""
        now = time.monotonic()
        deadlines = [w.task_started_at + self.timeout_s for w in self._workers if w.task is not None]
        deadlines += [w.started_at + _STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
        wait_s = max(0.0, min(deadlines) - now) if deadlines else None
        waitables = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        ready = set(multiprocessing.connection.wait(waitables, timeout=wait_s))
        now = time.monotonic()

        for worker in list(self._workers):
            message = None
            alive = True
            if worker.conn in ready:
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    alive = False
            elif worker.process.sentinel in ready:
                alive = False

            if message == _READY:
                worker.ready = True
                self._failed_starts = 0
            elif message is not None and worker.task is not None:
                seq, video, reason = message
                job = worker.task[1]
                finished[seq] = DecodeOutcome(job, video, reason, now - worker.task_started_at)
                worker.task = None
            elif not alive:
                task, started = worker.task, worker.task_started_at
                exit_code = self._replace_checked(worker)
                if task is not None:
                    reason = f"decoder process died (exit code {exit_code})"
                    finished[task[0]] = DecodeOutcome(task[1], None, reason, now - started)
            elif worker.task is not None and now >= worker.task_started_at + self.timeout_s:
                seq, job = worker.task
                self._replace(worker)
                reason = f"decode timed out after {self.timeout_s:g}s"
                finished[seq] = DecodeOutcome(job, None, reason, now - worker.task_started_at)
            elif not worker.ready and now >= worker.started_at + _STARTUP_TIMEOUT_S:
                self._replace_checked(worker)

    def _replace_checked(self, worker: _Worker) -> int | None:
        """Replace a dead worker, but give up if workers keep failing before they are ready."""
        was_ready = worker.ready
        if not was_ready:
            self._failed_starts += 1
        if self._failed_starts >= _MAX_FAILED_STARTS:
            exit_code = worker.stop(graceful=False)
            self.close()
            raise RuntimeError(
                f"decode workers failed to start {_MAX_FAILED_STARTS} times (last exit code {exit_code})"
            )
        return self._replace(worker)
