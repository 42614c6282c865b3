"""The ``ipcluster`` command: start, stop, inspect, grow and use a cluster.

``ipcluster start`` runs the controller as ``twistd ipcluster`` (in the
foreground, or as a daemon whose pid and log files live in the data
directory); ``stop`` ends it cleanly; ``status`` shows its engines;
``engines`` adds local engines to it; ``run`` starts a private cluster, runs a
script against it and stops it again.

One module per verb (``start``, ``stop``, ``status``, ``engines``, ``run``),
and the pieces they share: ``parser`` (the command line and :func:`main`),
``datadir`` (the data directory's files and what runs there), ``processes``
(our processes, seen through /proc), ``progress`` (bounded waits and their
dots) and ``errors`` (:class:`CLIError`).
"""
from ipcluster.cli.datadir import DataDir
from ipcluster.cli.errors import CLIError
from ipcluster.cli.parser import main
from ipcluster.cli.processes import engine_processes, pid_alive

__all__ = ["main", "CLIError", "DataDir", "engine_processes", "pid_alive"]
