"""Scheduling tasks onto engines, one idea a module.

- ``task``: a task and its lifecycle, an Automat machine (waiting, ready,
  assigned, releasing, running, done).
- ``submission``: the checks a submit's options pass before anything is queued.
- ``dependencies``: who waits on whom, and the outcomes of recent tasks.
- ``queues``: the ready queues, and what each engine holds.
- ``dispatch``: putting ready tasks on engines (balancing, prefetch) and
  releases (stealing a prefetched task, withdrawing one to cancel it).
- ``results``: a finished task's result, to its clients and the store, and
  again from the store.
- ``scheduler``: the ``Scheduler`` that wires them to the sockets and the store.
"""
