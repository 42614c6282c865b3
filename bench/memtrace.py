"""Run twistd under tracemalloc; SIGUSR2 writes a snapshot (used by ``bench/memory.py --snapshot``).

    python -X tracemalloc=8 bench/memtrace.py DIR -n --pidfile= ipcluster ...

On SIGUSR2 the snapshot goes to ``DIR/<name>.snap``, where ``name`` is read
from ``DIR/next`` (written first by whoever sends the signal).
"""
import gc
import os
import signal
import sys
import tracemalloc


def main() -> None:
    directory = sys.argv[1]

    def dump(signum, frame):
        gc.collect()
        with open(os.path.join(directory, "next")) as f:
            name = f.read().strip()
        target = os.path.join(directory, name + ".snap")
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        snapshot.dump(target + ".tmp")
        os.rename(target + ".tmp", target)

    if not tracemalloc.is_tracing():
        tracemalloc.start(8)
    signal.signal(signal.SIGUSR2, dump)
    sys.argv = ["twistd"] + sys.argv[2:]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
