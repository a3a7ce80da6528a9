"""A process pool that cannot hang: tasks in, results out in task order, a dead worker an error.

Why not ``multiprocessing.Pool`` or ``concurrent.futures.ProcessPoolExecutor``: both carry
every result over one pipe that all workers share, read by a helper thread. A worker killed
while it writes a result (the kernel's out-of-memory killer does not wait for a message to
end) leaves half a message in that pipe, and the thread waits for the rest forever; the
parent then waits forever for its results, and a Ctrl-C is never looked at. ``Pool`` also
replaces a dead worker and silently loses its task. (Both hangs were seen with ``alexnet
prepare`` and a worker killed mid-run: Pool's every time, the executor's now and then.)

Here each worker has two pipes of its own, one for its tasks and one for its results, and
the parent has no helper thread: it writes tasks and reads results without ever blocking
(non-blocking pipes under a selector), so that nothing a worker does, dying mid-message
included, can stop it. A worker's death shows as the end of its result pipe or as its
process sentinel, and ends the run with :class:`WorkerDied` (which worker, how it ended);
the wait for results wakes every ``poll`` seconds to call ``check`` (a stop request).
A worker whose parent is gone (killed) notices within a second and exits.

    pool = ProcessPool(2, initializer=init, initargs=(config,))
    try:
        for result in pool.imap((work, task) for task in tasks, check=stop.check, window=8):
            ...
    finally:
        pool.close(kill=...)     # kill=True: end the workers now (a stuck one too)
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import selectors
import signal
import struct
from collections import deque
from typing import Any, Callable, Iterable, Iterator

HEADER = struct.Struct("<Q")   # each message: its length, then its pickle
PARENT_CHECK_SECONDS = 1.0     # how often a waiting worker checks that its parent is still there
READ_BYTES = 1 << 20


class WorkerDied(Exception):
    """A worker process ended while the pool was in use: ``pid``, ``exitcode`` (None: unknown)."""

    def __init__(self, pid: int, exitcode: int | None):
        self.pid, self.exitcode = pid, exitcode
        super().__init__(f"worker process {pid} died ({self.how})")

    @property
    def signal_name(self) -> str | None:
        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return None

    @property
    def how(self) -> str:
        if self.exitcode is None:
            return "how is unknown"
        if self.exitcode < 0:
            return f"signal {-self.exitcode}, {self.signal_name or 'unknown'}"
        return f"exit status {self.exitcode}"


# --------------------------------------------------------------------------------------
# the worker side

def _frame(obj: Any) -> tuple[bytes, bytes]:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)), data


def _parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def _read_exact(fd: int, n: int, waiter: selectors.BaseSelector, parent: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None when the pipe ends or the parent is gone."""
    buf = bytearray()
    while len(buf) < n:
        if not waiter.select(PARENT_CHECK_SECONDS):
            if _parent_gone(parent):
                return None
            continue
        chunk = os.read(fd, min(n - len(buf), READ_BYTES))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _write_all(fd: int, parts: tuple[bytes, ...], waiter: selectors.BaseSelector, parent: int) -> bool:
    """Write ``parts`` to the non-blocking ``fd``; False when the parent is gone."""
    for part in parts:
        view = memoryview(part)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                if not waiter.select(PARENT_CHECK_SECONDS) and _parent_gone(parent):
                    return False
            except BrokenPipeError:
                return False
    return True


def _serve(initializer, initargs, tasks, results) -> None:
    """A worker: run each task it is sent, send back ("ok", result) or ("error", exception)."""
    parent = os.getppid()        # the pool's process (or, under forkserver, the server that dies with it)
    if initializer is not None:
        initializer(*initargs)
    rfd, wfd = tasks.fileno(), results.fileno()
    os.set_blocking(wfd, False)
    readable, writable = selectors.DefaultSelector(), selectors.DefaultSelector()
    readable.register(rfd, selectors.EVENT_READ)
    writable.register(wfd, selectors.EVENT_WRITE)
    while True:
        header = _read_exact(rfd, HEADER.size, readable, parent)
        if header is None:
            return
        payload = _read_exact(rfd, HEADER.unpack(header)[0], readable, parent)
        if payload is None:
            return
        item = pickle.loads(payload)
        if item is None:           # the pool is closing
            return
        function, task = item
        try:
            reply = ("ok", function(task))
        except Exception as exc:   # noqa: BLE001 - handed to the parent, which raises it
            reply = ("error", exc)
        try:
            parts = _frame(reply)
        except Exception:          # noqa: BLE001 - an exception that does not pickle
            parts = _frame(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))
        if not _write_all(wfd, parts, writable, parent):
            return


# --------------------------------------------------------------------------------------
# the parent side

class _Worker:
    def __init__(self, ctx, initializer, initargs):
        task_out, self.tasks = ctx.Pipe(duplex=False)        # the worker reads task_out
        self.results, result_in = ctx.Pipe(duplex=False)     # the worker writes result_in
        self.process = ctx.Process(target=_serve, args=(initializer, initargs, task_out, result_in), daemon=True)
        self.process.start()
        # Only the worker holds its ends now: its death closes them, which this side sees.
        task_out.close()
        result_in.close()
        os.set_blocking(self.tasks.fileno(), False)
        os.set_blocking(self.results.fileno(), False)
        self.out: deque[memoryview] = deque()   # task bytes not yet written
        self.inbox = bytearray()                 # result bytes not yet a whole message
        self.seqs: deque[int] = deque()          # the tasks it holds, in the order it answers

    def send(self, obj: Any) -> None:
        self.out.extend(memoryview(part) for part in _frame(obj))
        self.flush()

    def flush(self) -> None:
        """Write what the pipe takes now, without waiting."""
        while self.out:
            try:
                written = os.write(self.tasks.fileno(), self.out[0])
            except BlockingIOError:
                return
            except BrokenPipeError:
                raise self.died() from None
            if written == len(self.out[0]):
                self.out.popleft()
            else:
                self.out[0] = self.out[0][written:]

    def receive(self) -> list[tuple[int, str, Any]]:
        """Read what the pipe holds now (while the worker keeps writing, up to a whole message):
        the whole messages read, as (seq, status, value)."""
        while True:
            try:
                chunk = os.read(self.results.fileno(), READ_BYTES)
            except BlockingIOError:
                break
            if not chunk:          # every writer gone: the worker ended, maybe mid-message
                raise self.died()
            self.inbox += chunk
            if len(self.inbox) >= HEADER.size and len(self.inbox) >= HEADER.size + HEADER.unpack_from(self.inbox)[0]:
                break
        replies = []
        while len(self.inbox) >= HEADER.size:
            end = HEADER.size + HEADER.unpack_from(self.inbox)[0]
            if len(self.inbox) < end:
                break
            status, value = pickle.loads(self.inbox[HEADER.size:end])
            del self.inbox[:end]
            replies.append((self.seqs.popleft(), status, value))
        return replies

    def died(self) -> WorkerDied:
        self.process.join(1.0)     # it has ended (or is ending): its status
        return WorkerDied(self.process.pid, self.process.exitcode)


class ProcessPool:
    """``processes`` worker processes (started now), each running ``initializer(*initargs)`` first."""

    def __init__(self, processes: int, initializer: Callable | None = None, initargs: tuple = (),
                 context=None, depth: int = 2):
        ctx = context or multiprocessing.get_context()
        # Tasks a worker holds at once: with 2, its next task already waits in its pipe when it
        # sends a result, so it does not idle while this process handles that result.
        self.depth = depth
        self.workers: list[_Worker] = []
        try:
            for _ in range(processes):
                self.workers.append(_Worker(ctx, initializer, initargs))
        except BaseException:
            self.close(kill=True)
            raise

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    def imap(self, tasks: Iterable[tuple[Callable, Any]], check: Callable[[], None], window: int,
             poll: float = 0.2) -> Iterator[Any]:
        """``function(task)`` for each ``(function, task)``, in their order, at most ``window`` ahead.

        ``check`` is called at least every ``poll`` seconds while waiting (it raises to stop).
        A task's exception is raised here; a worker's death raises :class:`WorkerDied`.
        """
        tasks = iter(tasks)
        ready: dict[int, tuple[str, Any]] = {}
        sent = wanted = 0
        more = True
        while True:
            for w in self.workers:               # first keep every worker busy, then hand out results
                while more and len(w.seqs) < self.depth and sent < wanted + window:
                    item = next(tasks, None)
                    if item is None:
                        more = False
                        break
                    w.seqs.append(sent)
                    w.send(item)
                    sent += 1
            while wanted in ready:
                status, value = ready.pop(wanted)
                wanted += 1
                if status == "error":
                    raise value
                yield value
            if not more and wanted == sent:
                return
            self._wait(ready, check, poll)

    def _wait(self, ready: dict, check: Callable[[], None], poll: float) -> None:
        """One wait (at most ``poll`` seconds) for results, room in a task pipe, or a death."""
        with selectors.DefaultSelector() as selector:
            for w in self.workers:
                selector.register(w.process.sentinel, selectors.EVENT_READ, (w, "ended"))
                if w.seqs:
                    selector.register(w.results.fileno(), selectors.EVENT_READ, (w, "results"))
                if w.out:
                    selector.register(w.tasks.fileno(), selectors.EVENT_WRITE, (w, "tasks"))
            events = selector.select(poll)
        check()          # first: a SIGTERM to the whole process group also ends the workers
        for key, _ in events:
            w, what = key.data
            if what == "ended":
                raise w.died()
            if what == "tasks":
                w.flush()
            else:
                for seq, status, value in w.receive():
                    ready[seq] = (status, value)

    def close(self, kill: bool = False) -> None:
        """Let the workers end (``kill``: end them now, SIGKILL, a stuck or stopped one too)."""
        for w in self.workers:
            if not kill:
                try:
                    w.send(None)         # an idle worker's pipe is empty: this small message fits
                except WorkerDied:
                    pass
        for w in self.workers:
            if kill:
                w.process.kill()
            w.process.join(None if kill else 10.0)
            if w.process.exitcode is None:   # did not end when told: it is stuck
                w.process.kill()
                w.process.join()
            w.tasks.close()
            w.results.close()
        self.workers = []
