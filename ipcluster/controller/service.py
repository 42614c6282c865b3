"""The controller: a ``MultiService`` that builds its components and wires them, in one direction.

Build order is the dependency order, and no component reaches one built after it:

    sockets (send/drain by channel) <- heart monitor <- control channel <- local engines
        <- scheduler <- registrar, client front end, status source

The sockets are bound in ``privilegedStartService`` (so a port in use fails
twistd at once, before it daemonizes); the connection file is written when the
controller starts and removed when it stops cleanly.  Children: the heart
monitor and, with ``engines > 0``, the local engines (launched and supervised).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ipcluster import connection, datadir, errors
from ipcluster.connection import ConnectionInfo
from ipcluster.controller.config import ControllerConfig
from ipcluster.controller.control import ControlChannel, send_control_ping
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.frontend import ClientFrontEnd
from ipcluster.controller.heartmonitor import DRAIN_BATCH, HeartMonitor
from ipcluster.controller.identity import announce, curve_keys, kept_ports, previous_identity, sequence
from ipcluster.controller.log import log_engine_event
from ipcluster.controller.registrar import Registrar
from ipcluster.controller.registry import Registry
from ipcluster.controller.sessions import ClientSessions
from ipcluster.controller.sockets import ControllerSockets
from ipcluster.controller.status import ControllerStatus
from ipcluster.interfaces import ITaskStore
from ipcluster.controller.engines import LocalEngines
from ipcluster.scheduler.scheduler import Scheduler
from ipcluster.store.memory import MemoryTaskStore
from ipcluster.store.sqlite import SQLiteTaskStore
from ipcluster.transport.security import CurveKeys
from ipcluster.transport.wire import BadMessage, Codec, PingCodec, new_key

__all__ = ["AlreadyRunning", "Controller", "ControllerConfig"]


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
        #: The previous controller's connection file, if it was killed (its key and ports are reused).
        self.previous = previous_identity(config.connection_file)
        self.key = self.previous.key if self.previous is not None else new_key()
        #: CURVE keys: the previous controller's (kept in the data dir) when it is taken over.
        self.curve: Optional[CurveKeys] = curve_keys(config.data_dir, self.previous, config.curve_enabled)
        self.codec = Codec(self.key, sequence=sequence())
        self.pings = PingCodec(self.key)
        self.registry = Registry(clock=reactor, dead_ttl=config.dead_engine_ttl)
        self.drops = DropLog(reactor)
        self.sockets = ControllerSockets(
            reactor, config, self.drops, self.key, self.curve, kept=kept_ports(self.previous, config.ports)
        )
        self.client_sessions = ClientSessions()
        self.info: Optional[ConnectionInfo] = None
        self.store: Optional[ITaskStore] = None
        send = self.sockets.sender
        self.monitor = HeartMonitor(
            reactor,
            self.registry,
            self.pings,
            send_heart=self.sockets.pair_sender("heartbeat"),
            send_control_ping=functools.partial(send_control_ping, self.codec, send("control")),
            period=config.heartbeat_period,
            misses=config.heartbeat_misses,
            busy_after=config.busy_after,
            registration_timeout=config.registration_timeout,
            drain=self.sockets.drainer("heartbeat", "control", limit=DRAIN_BATCH),
            sending=functools.partial(self.sockets.holding, "heartbeat", "control"),
        )
        self.control = ControlChannel(
            self.registry, self.monitor, self.codec, reactor, send("control"), self.drops, config.control_timeout
        )
        self.local_engines = LocalEngines(
            reactor, self.registry, str(config.connection_file), config.engines, policy=config.restart_policy(),
            drain=self.sockets.drainer("task", "control"),
            launcher_factory=lambda on_ended, ids: config.launcher.build(
                reactor, str(config.connection_file), on_ended, ids, str(config.data_dir)),
        )
        # A dead local engine its supervisor gave up on stays listed: it will not come back by itself.
        self.registry.keep_dead = lambda record: self.local_engines.gave_up(record.id)
        self.scheduler = Scheduler(
            self.registry,
            self.codec,
            reactor,
            send("task"),
            send("client"),
            self.drops,
            store=MemoryTaskStore(),  # replaced by the configured store when the controller starts
            control_for=self.control.control_for,
            prefetch=config.prefetch,
            on_engine_traffic=self.monitor.control_seen,
            session_of=self.client_sessions.session_of,
            no_engine_timeout=config.no_engine_timeout,
            engines_coming=self.local_engines.coming,
            max_payload=config.store_max_payload,
            max_result=config.store_max_result,
            recovery_grace=config.recovery_grace,
        )
        self.local_engines.subscribe(self.scheduler.engines_changed)
        self.scheduler.inputs.max_message_size = config.max_message_size  # a task_in must fit it
        # The scheduler records what each engine runs; the control channel hears it in pongs.
        self.control.on_status = self.scheduler.engine_reported
        self.registrar = Registrar(
            self.registry, self.codec, reactor, send("registration"), self.drops, config.heartbeat_period,
            is_local=self.local_engines.is_local, key=self.key,
        )
        self.frontend = ClientFrontEnd(
            self.registry, self.control, self.scheduler, self.codec, reactor, send("client"), self.drops,
            self.client_sessions,
        )
        self.status = ControllerStatus(
            reactor, self.registry, self.scheduler, self.drops, config, self.sockets.ports, self.local_engines
        )
        self.registry.subscribe(log_engine_event)
        _MonitorService(self.monitor).setServiceParent(self)
        if config.engines > 0:
            self.local_engines.setServiceParent(self)

    # -- sockets ---------------------------------------------------------------

    def _on_heartbeat(self, frames: list) -> None:
        # The hot path (20,000 pongs a second at 10,000 engines): the sender is looked up only to name it in a drop.
        if len(frames) == 2:
            try:
                self.monitor.pong_received(frames[0], frames[1])
                return
            except BadMessage as e:
                reason, detail = e.reason, e.detail
        else:
            reason, detail = "wrong frame count", f"{len(frames)} frames"
        record = self.registry.by_identity(frames[0]) if frames else None
        peer = record.id.encode() if record is not None else b"an unregistered engine"  # never the token
        self.drops.drop("heartbeat", reason, peer, detail)

    def bind(self) -> None:
        """Bind every socket (on the configured or random ports)."""
        self.sockets.bind(
            {
                "registration": self.registrar.message_received,
                "heartbeat": self._on_heartbeat,
                "control": self.control.message_received,
                "task": self.scheduler.message_received,
                "client": self.frontend.message_received,
            }
        )
        self.info = ConnectionInfo(
            ip=self.sockets.advertised_address(), ports=self.sockets.ports(), key=self.key, controller_pid=os.getpid(),
            max_message_size=self.config.max_message_size, curve=self.curve,
        )

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
        datadir.ensure_usable(data_dir)

    def privilegedStartService(self) -> None:
        self.check_data_dir()
        if not self.sockets.bound:
            self.bind()
        super().privilegedStartService()

    def open_store(self) -> ITaskStore:
        if self.store is None:
            config = self.config
            if config.store == "memory":
                self.store = MemoryTaskStore(max_age=config.store_max_age, max_tasks=config.store_max_tasks)
            else:
                config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.store = SQLiteTaskStore(
                    str(config.store_path), self.reactor, max_age=config.store_max_age, max_tasks=config.store_max_tasks,
                    call_soon=self.sockets.soon,
                )
        return self.store

    def startService(self) -> None:
        if not self.sockets.bound:
            self.bind()
        if self.previous is not None:
            announce(self.previous, self.config.connection_file)
        connection.write(self.info, self.config.connection_file)
        self.log.info(
            "controller listening on {ip}, ports {ports}; connection file {path}",
            ip=self.config.ip,
            ports=self.info.ports,
            path=str(self.config.connection_file),
        )
        # Children first: the local engines are spawned now and import while the store opens
        # (a new SQLite file takes 10-200 ms).  Nothing is read from a socket before this
        # method returns, so no task can meet the placeholder store.
        super().startService()
        self.scheduler.store = self.open_store()
        # The old controller's tasks in flight: engines report them, or they run again (recovery.py).
        self.scheduler.store.unfinished().addCallback(self.scheduler.recover).addErrback(
            lambda f: self.log.failure("could not recover the tasks in flight from the store", f)
        )

    @defer.inlineCallbacks
    def stopService(self):
        try:
            yield super().stopService()
        finally:
            self.control.stop(errors.NoController("the controller is stopping"))
            self.scheduler.stop()
            self.registry.stop()
            self._remove_connection_file()
            self.sockets.close()  # no input after this point, so nothing new to log or store
            self.drops.stop()
            if self.store is not None:
                store, self.store = self.store, None
                yield store.close()
            self.log.info("controller stopped")

    def _remove_connection_file(self) -> None:
        try:
            if self.info is not None and connection.read(self.config.connection_file).key == self.key:
                os.unlink(self.config.connection_file)
        except Exception as e:
            self.log.warn("could not remove connection file: {e}", e=e)
