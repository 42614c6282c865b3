"""Clients: the blocking :class:`Client` and the Twisted-native :class:`TwistedClient`."""
from ipcluster.client.sync import Client, TaskFuture

__all__ = ["Client", "TaskFuture", "TwistedClient"]


def __getattr__(name):
    # Imported lazily: it pulls in txZMQ, which installs a reactor.
    if name == "TwistedClient":
        from ipcluster.client.twisted import TwistedClient

        return TwistedClient
    raise AttributeError(name)
