"""Under ``mpiexec -n 2``: rank 1 raises while rank 0 waits in a barrier; the job must end
with rank 1's message instead of hanging. Prints the time of the raise for the test."""

from __future__ import annotations

import time

from tracegrad import distributed as dist


def main() -> None:
    dist.init_process_group()
    if dist.get_rank() == 1:
        print(f"raising at {time.time()}", flush=True)
        raise ValueError("rank one failed on purpose")
    dist.barrier()  # never completes: rank 1 does not get here


if __name__ == "__main__":
    main()
