"""The controller's own engines: ``--engines N`` started through a launcher and watched.

:class:`LocalEngines` is the service that starts them when the controller
starts, declares an engine dead the moment its launcher reports its process
ended, and stops them all when the controller stops.
"""
from __future__ import annotations

from typing import Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ipcluster.controller.registry import ACTIVE_STATES, Registry
from ipcluster.interfaces import ILauncher
from ipcluster.launchers.local import EngineProcess, LocalLauncher


class LocalEngines(service.Service):
    """Starts ``count`` engines (ids ``e0``, ``e1``, ...) and stops them on shutdown."""

    log = Logger()

    def __init__(
        self,
        reactor,
        registry: Registry,
        connection_file: str,
        count: int,
        prefix: str = "e",
        stop_timeout: float = 5.0,
        launcher: Optional[ILauncher] = None,
    ) -> None:
        self.reactor = reactor
        self.registry = registry
        self.count = count
        self.prefix = prefix
        self.stop_timeout = stop_timeout
        self.launcher = launcher if launcher is not None else LocalLauncher(reactor, connection_file, self._ended)

    def engine_ids(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]

    def is_local(self, engine_id: str) -> bool:
        return self.launcher.is_local(engine_id)

    def startService(self) -> None:
        super().startService()
        self.launcher.start(self.engine_ids()).addErrback(
            lambda f: self.log.failure("could not start the local engines", f)
        )

    def start_engine(self, engine_id: str) -> EngineProcess:
        return self.launcher.start_engine(engine_id)

    def _ended(self, engine_id: str, pid: int, why: str) -> None:
        record = self.registry.get(engine_id)
        if record is not None and record.state in ACTIVE_STATES and record.pid == pid:
            self.registry.mark_dead(record, why, self.reactor.seconds())
        else:
            self.log.info("engine {engine} process ended: {why}", engine=engine_id, why=why)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.launcher.stop(self.stop_timeout)
