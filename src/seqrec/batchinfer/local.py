"""The local engine: reader thread -> model (calling thread) -> writer thread, with bounded queues.

The reader streams record batches part after part, the calling thread scores them, the writer
writes and commits parts (``PartWriter``): Parquet decoding and encoding run in Arrow and the
model in PyTorch or ONNX Runtime, all outside the GIL, so the three keep busy at once while at
most ``QUEUE_DEPTH`` batches wait between two stages (memory stays bounded). An error in any
stage stops the others and is raised in the calling thread; a part is only committed whole, and
parts scored whole before a failed read or score are committed before the error is raised.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from seqrec.batchinfer.core import BatchScorer
from seqrec.batchinfer.inputs import InputPart, InputPlan, read_part
from seqrec.batchinfer.writer import PartWriter

QUEUE_DEPTH = 4
READ_BATCHES = 4  # input rows per record batch = READ_BATCHES x batch_size: room for length buckets
_END, _ERROR = object(), object()


def run_local(scorer: BatchScorer, plan: InputPlan, todo: list[InputPart], writer: PartWriter) -> None:
    """Score the parts ``todo`` into ``writer`` with ``scorer`` (entered by the caller: its model is known
    to load before the job writes anything); returns when the last part is committed."""
    stream = _background(_read_parts(plan, todo, scorer.batch_size * READ_BATCHES))
    drain = _Drain(lambda item: writer.handle(*item), writer.abort)
    try:
        for part, batch, began in stream:  # began: when the part's reading began, its clock's start
            drain.put((part, None if batch is None else scorer.score(batch), began))
    except Exception:
        drain.settle()  # a failed read or score: parts already complete in the queue are still committed
        raise
    except BaseException:  # Ctrl-C: stop at once
        drain.abort()
        raise
    finally:
        stream.close()
    drain.close()


def _read_parts(plan: InputPlan, todo: list[InputPart],
                batch_rows: int) -> Iterator[tuple[InputPart, pa.RecordBatch | None, float]]:
    """(part, batch, began) for every batch of every part, then (part, None, began) to close the part;
    ``began``: the ``time.perf_counter()`` reading when the part's reading began."""
    for part in todo:
        began = time.perf_counter()
        for batch in read_part(part, plan, batch_rows):
            if batch.num_rows:
                yield part, batch, began
        yield part, None, began


def _background(items: Iterable) -> Iterator:
    """Iterate ``items`` in a daemon thread, handing them over a bounded queue; errors are re-raised here."""
    handoff: queue.Queue = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if not _put(handoff, item, stop):
                    return
            _put(handoff, _END, stop)
        except BaseException as error:  # handed to the consumer, which raises it
            _put(handoff, (_ERROR, error), stop)

    threading.Thread(target=work, name="seqrec-reader", daemon=True).start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, tuple) and item and item[0] is _ERROR:
                raise item[1]
            yield item
    finally:
        stop.set()


class _Drain:
    """Hands items to ``handle`` in a worker thread through a bounded queue."""

    def __init__(self, handle: Callable[[object], None], on_abort: Callable[[], None]) -> None:
        self.handoff: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.handle, self.on_abort = handle, on_abort
        self.done = threading.Event()  # set when the worker has returned: waited on instead of thread.join(),
        # which, once interrupted by Ctrl-C or SIGTERM, returns at once on the next call while the thread still runs
        self.thread = threading.Thread(target=self._work, name="seqrec-writer", daemon=True)
        self.thread.start()

    def put(self, item: object) -> None:
        if not _put(self.handoff, item, self.stop) or self.error is not None:
            raise self.error or RuntimeError("writer stopped")

    def close(self) -> None:
        try:
            _put(self.handoff, _END, self.stop)
            self.done.wait()
        except BaseException:  # Ctrl-C or SIGTERM while the last part commits: stop the writer before leaving
            self.abort()
            raise
        if self.error is not None:
            self.on_abort()
            raise self.error

    def settle(self) -> None:
        """Let the worker handle what it was given, then abort what is left open; its own error is
        dropped (the caller is raising the error that stopped the work)."""
        _put(self.handoff, _END, self.stop)
        self.done.wait()
        self.on_abort()

    def abort(self) -> None:
        self.stop.set()
        self.done.wait()
        self.on_abort()

    def _work(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = self.handoff.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                self.handle(item)
        except BaseException as error:  # re-raised by put() or close() in the calling thread
            self.error = error
            self.stop.set()
        finally:
            self.done.set()


def _put(handoff: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put unless ``stop`` is set first; True when the item went in."""
    while not stop.is_set():
        try:
            handoff.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
