"""The local engine: decode images in a thread pool while the model runs batches in the calling
thread, and write finished shards in the background.

Decoding (Pillow releases the GIL) overlaps the model's batches; at most one shard waits to be
written while the next is explained. An interrupt stops after the batch in flight: the shard
being written is finished (it is complete), the one being explained is dropped.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import os
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from .explainer import BatchExplainer, Piece, Prepared, error_record, prepare
from .job import AuditJob
from .sources import Item

#: Threads decoding images (they sleep in Pillow's C code most of the time).
DECODE_THREADS = max(2, min(8, os.cpu_count() or 2))

Written = Callable[[int, Piece, Dict[str, Any]], None]


def _prepared(items: Sequence[Item], job: AuditJob, pool: futures.Executor, ahead: int) -> Iterator[Tuple[Item, Any]]:
    """(item, Prepared or the error reading it), in order, decoding up to ``ahead`` images ahead."""
    queue: Deque[Tuple[Item, futures.Future]] = collections.deque()
    source = iter(items)
    try:
        while True:
            while len(queue) < ahead:
                item = next(source, None)
                if item is None:
                    break
                queue.append((item, pool.submit(prepare, item, job)))
            if not queue:
                return
            item, future = queue.popleft()
            try:
                result = future.result()
            except ImportError:
                raise
            except Exception as error:  # noqa: BLE001 - one unreadable image is one errors.csv row
                result = error
            yield item, result
    finally:
        for _, future in queue:
            future.cancel()


def batches(items: Sequence[Item], size: int) -> List[Sequence[Item]]:
    """A shard's model batches: ``size`` consecutive images each (an unreadable one leaves its
    batch smaller). Both engines batch this way, so they give the model the same batches."""
    return [items[k:k + size] for k in range(0, len(items), size)]


def run_local(explainer: BatchExplainer, job: AuditJob, work: Dict[int, List[Item]], write: Written,
              advance: Callable[[int], None]) -> None:
    """Explain the items of every shard in ``work`` and hand each finished shard to ``write``
    (called in a background thread, one shard at a time)."""
    items = [item for shard in sorted(work) for item in work[shard]]
    pool = futures.ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="cnnlens-decode")
    writer = futures.ThreadPoolExecutor(1, thread_name_prefix="cnnlens-write")
    pending: Optional[futures.Future] = None
    try:
        stream = _prepared(items, job, pool, ahead=2 * job.batch_size + DECODE_THREADS)
        for shard in sorted(work):
            started = time.perf_counter()
            piece = Piece()
            for chunk in batches(work[shard], job.batch_size):
                ready: List[Prepared] = []
                for _ in chunk:
                    item, result = next(stream)
                    if isinstance(result, Prepared):
                        ready.append(result)
                    else:
                        piece.errors.append(error_record(item, result))
                piece.extend(explainer.explain(ready))
                advance(len(chunk))
            if pending is not None:
                pending.result()  # one shard waits to be written at most
            record = {"shard": shard, "images": len(work[shard]), "seconds": time.perf_counter() - started}
            pending = writer.submit(write, shard, piece, record)
        if pending is not None:
            pending.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
