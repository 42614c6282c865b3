"""The controller: its sockets, its components, and their services.

``Controller`` is a ``MultiService``.  Its sockets are bound in
``privilegedStartService`` (so a port in use fails twistd at once, before it
daemonizes), the connection file is written when it starts and removed when
it stops cleanly.  Children: the heart monitor and, with ``engines > 0``,
the local engine launcher.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

import attr
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ipcluster import connection, errors
from ipcluster.connection import CHANNELS, ConnectionInfo
from ipcluster.controller.control import DEFAULT_TIMEOUT, ControlChannel
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.frontend import ClientFrontEnd, Registrar
from ipcluster.controller.heartmonitor import DEFAULT_MISSES, DEFAULT_PERIOD, HeartMonitor
from ipcluster.launchers.local import LocalEngines
from ipcluster.controller.registry import EngineRecord, Registry
from ipcluster.controller.status import ControllerStatus
from ipcluster.scheduler.scheduler import DEFAULT_PREFETCH, Scheduler
from ipcluster.store.sqlite import ITaskStore, MemoryTaskStore, SQLiteTaskStore
from ipcluster.transport.wire import BadMessage, Codec, PingCodec, new_key


@attr.s(frozen=True)
class ControllerConfig:
    """Everything the controller can be told (see ``twistd ipcluster --help``)."""

    data_dir: Path = attr.ib(factory=connection.default_data_dir, converter=lambda p: Path(p).expanduser())
    ip: str = attr.ib(default="127.0.0.1")
    location: Optional[str] = attr.ib(default=None)
    ports: dict = attr.ib(factory=dict)
    engines: int = attr.ib(default=0)
    heartbeat_period: float = attr.ib(default=DEFAULT_PERIOD)
    heartbeat_misses: int = attr.ib(default=DEFAULT_MISSES)
    busy_after: Optional[float] = attr.ib(default=None)
    registration_timeout: float = attr.ib(default=10.0)
    control_timeout: float = attr.ib(default=DEFAULT_TIMEOUT)
    max_message_size: int = attr.ib(default=256 * 1024 * 1024)
    max_batch: int = attr.ib(default=200)
    prefetch: int = attr.ib(default=DEFAULT_PREFETCH)
    store: str = attr.ib(default="sqlite")
    store_max_age: Optional[float] = attr.ib(default=7 * 24 * 3600.0)
    store_max_tasks: Optional[int] = attr.ib(default=1_000_000)

    @property
    def connection_file(self) -> Path:
        return self.data_dir / connection.CONNECTION_FILE


class AlreadyRunning(Exception):
    """Another controller is running with the same data directory."""


class _MonitorService(service.Service):
    def __init__(self, monitor: HeartMonitor) -> None:
        self.monitor = monitor

    def startService(self) -> None:
        super().startService()
        self.monitor.start()

    def stopService(self) -> None:
        super().stopService()
        self.monitor.stop()


class Controller(service.MultiService):
    """The ipcluster controller, as a tree of Twisted services."""

    log = Logger()

    def __init__(self, config: ControllerConfig, reactor=None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.key = new_key()
        self.codec = Codec(self.key)
        self.pings = PingCodec(self.key)
        self.registry = Registry()
        self.drops = DropLog(reactor)
        self.sockets: dict = {}
        self.info: Optional[ConnectionInfo] = None
        self._factory = None
        self.monitor = HeartMonitor(
            reactor,
            self.registry,
            self.pings,
            send_heart=lambda identity, ping: self._send("heartbeat", [identity, ping]),
            send_control_ping=lambda record, beat: self.control.send_ping(record, beat),
            period=config.heartbeat_period,
            misses=config.heartbeat_misses,
            busy_after=config.busy_after,
            registration_timeout=config.registration_timeout,
            drain=lambda: (self._drain("heartbeat"), self._drain("control")),
        )
        self.control = ControlChannel(
            self.registry,
            self.monitor,
            self.codec,
            reactor,
            lambda frames: self._send("control", frames),
            self.drops,
            config.control_timeout,
        )
        self.store: Optional[ITaskStore] = None
        self.scheduler = Scheduler(
            self.registry,
            self.codec,
            reactor,
            lambda frames: self._send("task", frames),
            lambda frames: self._send("client", frames),
            self.drops,
            store=MemoryTaskStore(),  # replaced by the configured store when the controller starts
            control_for=self.control.control_for,
            prefetch=config.prefetch,
            on_engine_traffic=self.monitor.control_seen,
        )
        self.status = ControllerStatus(
            reactor, self.registry, self.scheduler, self.drops, config, lambda: dict(self.info.ports) if self.info else {}
        )
        self.local_engines = LocalEngines(reactor, self.registry, str(config.connection_file), config.engines)
        self.registrar = Registrar(
            self.registry,
            self.codec,
            reactor,
            lambda frames: self._send("registration", frames),
            self.drops,
            config.heartbeat_period,
            is_local=self.local_engines.is_local,
        )
        self.frontend = ClientFrontEnd(
            self.registry,
            self.control,
            self.scheduler,
            self.codec,
            reactor,
            lambda frames: self._send("client", frames),
            self.drops,
        )
        self.registry.subscribe(self._log_event)
        _MonitorService(self.monitor).setServiceParent(self)
        if config.engines > 0:
            self.local_engines.setServiceParent(self)

    # -- sockets ---------------------------------------------------------------

    def _send(self, channel: str, frames) -> bool:
        sock = self.sockets.get(channel)
        sent = sock.send_frames(frames) if sock is not None else False
        if not sent and channel == "client" and sock is not None:
            # Results stay in the task store: the client can fetch them.
            self.drops.drop("client", "reply undeliverable (client gone, or not reading)", frames[0])
        return sent

    def _drain(self, channel: str) -> None:
        sock = self.sockets.get(channel)
        if sock is not None:
            sock.drain()

    def _on_heartbeat(self, frames: list) -> None:
        if len(frames) != 2:
            self.drops.drop("heartbeat", "wrong frame count", frames[0] if frames else b"", f"{len(frames)} frames")
            return
        try:
            self.monitor.pong_received(frames[0], frames[1])
        except BadMessage as e:
            self.drops.drop("heartbeat", e.reason, frames[0], e.detail)

    def bind(self) -> None:
        """Bind every socket (on the configured or random ports)."""
        from ipcluster.transport.reactor import RouterSocket, make_factory

        self._factory = make_factory(self.reactor)
        handlers = {
            "registration": self.registrar.message_received,
            "heartbeat": self._on_heartbeat,
            "control": self.control.message_received,
            "task": self.scheduler.message_received,
            "client": self.frontend.message_received,
        }
        try:
            for channel in CHANNELS:
                port = int(self.config.ports.get(channel, 0) or 0)
                address = f"tcp://{self.config.ip}:{port}" if port else f"tcp://{self.config.ip}:*"
                self.sockets[channel] = RouterSocket(
                    self._factory,
                    address,
                    handlers[channel],
                    max_batch=self.config.max_batch,
                    max_message_size=self.config.max_message_size,
                    name=channel,
                )
        except Exception:
            self._close_sockets()
            raise
        self.info = ConnectionInfo(
            ip=self.advertised_address(),
            ports={channel: sock.port for channel, sock in self.sockets.items()},
            key=self.key,
            controller_pid=os.getpid(),
        )

    def advertised_address(self) -> str:
        """The address written to the connection file: where engines and clients connect."""
        if self.config.location:
            return self.config.location
        if self.config.ip in ("0.0.0.0", "*", "::", ""):
            return socket.getfqdn()
        return self.config.ip

    def _close_sockets(self) -> None:
        if self._factory is not None:
            self._factory.shutdown()
            self._factory = None
        self.sockets = {}

    # -- service ---------------------------------------------------------------

    def check_data_dir(self) -> None:
        """Raise AlreadyRunning or OSError (with a clear message) if the data dir cannot be ours."""
        data_dir = self.config.data_dir
        path = self.config.connection_file
        if path.exists():
            try:
                old = connection.read(path)
            except Exception:
                old = None
            if old is not None and old.controller_pid != os.getpid() and connection.pid_alive(old.controller_pid):
                raise AlreadyRunning(
                    f"a controller (pid {old.controller_pid}) already runs with data dir {data_dir}; "
                    "stop it first or pass another --data-dir"
                )
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = data_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise OSError(f"data dir {data_dir} is not usable: {e.strerror or e}") from None

    def privilegedStartService(self) -> None:
        self.check_data_dir()
        if not self.sockets:
            self.bind()
        super().privilegedStartService()

    def open_store(self) -> ITaskStore:
        if self.store is None:
            if self.config.store == "memory":
                self.store = MemoryTaskStore(max_age=self.config.store_max_age, max_tasks=self.config.store_max_tasks)
            else:
                self.config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.store = SQLiteTaskStore(
                    str(self.config.data_dir / "tasks.sqlite"),
                    self.reactor,
                    max_age=self.config.store_max_age,
                    max_tasks=self.config.store_max_tasks,
                )
        return self.store

    def startService(self) -> None:
        self.scheduler.store = self.open_store()
        if not self.sockets:
            self.bind()
        connection.write(self.info, self.config.connection_file)
        self.log.info(
            "controller listening on {ip}, ports {ports}; connection file {path}",
            ip=self.config.ip,
            ports=self.info.ports,
            path=str(self.config.connection_file),
        )
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        try:
            yield super().stopService()
        finally:
            for control in list(self.control.controls.values()):
                control.engine_gone(errors.NoController("the controller is stopping"))
            self.control.controls.clear()
            self.scheduler.stop()
            try:
                if self.info is not None and connection.read(self.config.connection_file).key == self.key:
                    os.unlink(self.config.connection_file)
            except Exception as e:
                self.log.warn("could not remove connection file: {e}", e=e)
            self._close_sockets()  # no input after this point, so nothing new to log or store
            self.drops.stop()
            if self.store is not None:
                store, self.store = self.store, None
                yield store.close()
            self.log.info("controller stopped")

    # -- logging ---------------------------------------------------------------

    def _log_event(self, event: str, record: EngineRecord, reason: str) -> None:
        where = f"{record.host} pid {record.pid}"
        if event == "registering":
            self.log.info("engine {engine} registering ({where})", engine=record.id, where=where)
        elif event == "joined":
            self.log.info("engine {engine} joined ({where})", engine=record.id, where=where)
        elif event == "busy":
            self.log.warn("engine {engine} busy: {reason}", engine=record.id, reason=reason)
        elif event == "alive":
            self.log.info("engine {engine} alive again {reason}", engine=record.id, reason=reason)
        elif event == "dead":
            self.log.error("engine {engine} dead ({where}): {reason}", engine=record.id, where=where, reason=reason)
        elif event == "left":
            self.log.info("engine {engine} left ({where}): {reason}", engine=record.id, where=where, reason=reason)
        elif event == "purged":
            self.log.warn("engine {engine} registration purged: {reason}", engine=record.id, reason=reason)

