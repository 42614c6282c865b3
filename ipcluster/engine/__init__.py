"""The engine: runs tasks on its main thread, control on a second thread, its heart on a third.

``namespace`` is this engine's own dictionary: tasks may keep state in it
between calls, and the ``reset`` control command clears it::

    def remember(x):
        from ipcluster.engine import namespace
        namespace["x"] = x
"""
namespace: dict = {}
