"""Blocks of an EM pass run side by side on CPU threads.

The E step and the M step statistics of a block of rows are two small matrix products and a
few passes over a ``(K, rows)`` array: too little work per operation for torch's own
intra-operation threads to pay (on two cores they made an iteration slower than one thread).
:func:`map_blocks` runs whole blocks concurrently instead, one per thread, each with
single-threaded kernels -- as scikit-learn's k-means limits the BLAS to one thread and
parallelizes over chunks of samples. Torch releases the GIL inside its kernels, so plain Python
threads suffice.

Results do not depend on the number of threads: the blocks are the same, each block is
computed with single-threaded kernels whichever thread takes it, and the caller combines the
per-block results in block order.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["map_blocks"]

_pool = None          # (executor, number of threads), created or grown on demand
_pool_lock = threading.Lock()


def _executor(workers):
    """A process-wide pool of at least ``workers`` threads."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[1] < workers:
            old, _pool = _pool, (ThreadPoolExecutor(workers, thread_name_prefix="pyro_vae_em"), workers)
            if old is not None:
                old[0].shutdown(wait=False)   # its threads end once their current work is done
        return _pool[0]


def map_blocks(fn, n_blocks, device):
    """``[fn(0), ..., fn(n_blocks - 1)]``, the calls spread over ``torch.get_num_threads()`` threads.

    On a CPU with more than one torch thread, torch's thread count is set to 1 for the duration
    (restored afterwards, also on error) and the calling thread plus up to ``threads - 1`` pool
    threads take blocks in order from a shared counter, so a thread slowed by other work on its
    core takes fewer blocks. On one thread every block runs on the calling thread, also with
    single-threaded kernels; on other devices the calls run one after the other.

    ``fn`` must only read shared tensors and return new ones: it runs concurrently with itself.
    Two fits in different threads of one process may see each other's temporary thread count
    (they get slower, not different).

    :param fn: ``fn(i)`` computes block ``i``.
    :param int n_blocks: number of blocks.
    :param torch.device device: where the blocks are computed.
    :returns: list of the ``n_blocks`` results, in block order.
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1 or n_blocks == 0:
        return [fn(i) for i in range(n_blocks)]
    results = [None] * n_blocks
    lock = threading.Lock()
    state = {"next": 0, "failed": False}

    def work():
        while True:
            with lock:
                i = state["next"]
                if i >= n_blocks or state["failed"]:
                    return
                state["next"] = i + 1
            try:
                results[i] = fn(i)
            except BaseException:
                state["failed"] = True
                raise

    workers = min(threads, n_blocks)
    torch.set_num_threads(1)
    try:
        helpers = _executor(workers - 1) if workers > 1 else None
        futures = [helpers.submit(work) for _ in range(workers - 1)]
        try:
            work()
        finally:
            for future in futures:   # every helper has stopped before the thread count returns
                future.exception()
        for future in futures:
            future.result()
    finally:
        torch.set_num_threads(threads)
    return results
