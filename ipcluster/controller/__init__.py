"""The controller: a tree of Twisted services around a few ZeroMQ ROUTER sockets."""
