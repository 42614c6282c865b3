"""Launchers: what starts engine processes (``ILauncher``).

``command`` is the engine command line every launcher runs; ``local`` holds
``LocalEngines``, the controller's own engines (children of its reactor);
``detached`` holds ``DetachedEngines``, the engines ``ipcluster engines``
leaves running in sessions of their own.
"""
