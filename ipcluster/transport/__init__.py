"""What every side shares to talk: the signed wire format, fast frame I/O, sockets on the reactor.

``wire`` (envelopes, codecs, the schema table) and ``zmqfast`` import no
reactor; ``reactor`` (txZMQ sockets) installs the global reactor when first
imported, so import it only once a reactor is chosen.
"""

DEFAULT_MAX_BATCH = 200  # messages read from one socket before yielding to the reactor
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
DEFAULT_RCVHWM = 100_000  # messages queued per peer
DEFAULT_SNDHWM = 1_000_000
