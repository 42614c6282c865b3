"""ipcluster: a parallel-computing cluster for Python with a Twisted controller.

Quick use, with a controller running (``twistd -n ipcluster --engines 2``)::

    from ipcluster import Client
    client = Client()
    client.wait_for_engines(2)
    print(client.submit(pow, 2, 10, engine="e0").result())
"""
__version__ = "0.1.0"

__all__ = ["Client", "TaskFuture", "TwistedClient", "__version__"]


def load_ipython_extension(ipython):
    """``%load_ext ipcluster``: the ``%px`` magics (``ipcluster.magics``)."""
    from ipcluster.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    from ipcluster.magics import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name):
    # Lazy, so that importing ipcluster (e.g. in an engine) stays light.
    if name in ("Client", "TaskFuture", "TwistedClient"):
        import ipcluster.client as client

        return getattr(client, name)
    raise AttributeError(name)
