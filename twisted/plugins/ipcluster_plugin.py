"""twistd plugin: ``twistd ipcluster`` runs an ipcluster controller.

Kept import-light on purpose: importing txZMQ installs a reactor, so nothing
heavy is imported until ``makeService`` runs (after twistd installed its own).
"""
from twisted.application.service import ServiceMaker

ipcluster = ServiceMaker(
    "ipcluster controller",
    "ipcluster.controller.tap",
    "Run an ipcluster controller: engines register with it, stay under a "
    "heartbeat, and run tasks sent by clients.",
    "ipcluster",
)
