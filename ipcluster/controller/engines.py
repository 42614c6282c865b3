"""The controller's own engines: ``--engines N`` started through a launcher, watched and supervised.

:class:`LocalEngines` is the service that starts them when the controller
starts, declares an engine dead the moment its launcher reports its process
ended, restarts it through its :class:`~ipcluster.controller.supervisor.EngineSupervisor`
(back-off, restart budget, memory limit), and stops them all when the
controller stops -- supervisors first, so that nothing is restarted on the way down.
"""
from __future__ import annotations

from typing import Callable, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ipcluster.controller.memory import MemoryWatch, read_rss
from ipcluster.controller.registry import ACTIVE_STATES, Registry
from ipcluster.controller.supervisor import GIVEN_UP, EngineSupervisor, NoTransition, RestartPolicy
from ipcluster.interfaces import ILauncher
from ipcluster.launchers.local import CLEAN_EXIT, EngineProcess, LocalLauncher


class LocalEngines(service.Service):
    """Starts ``count`` engines (ids ``e0``, ``e1``, ...), keeps them running, and stops them on shutdown.

    A launcher passed in must report each process's end to :meth:`process_ended`;
    ``drain()`` reads the engines' sockets (the controller's task and control sockets).
    """

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
        policy: RestartPolicy = RestartPolicy(),
        rss_of: Callable[[int], Optional[int]] = read_rss,
        drain: Callable[[], None] = lambda: None,
        launcher_factory: Optional[Callable[..., ILauncher]] = None,
    ) -> None:
        self.reactor = reactor
        self.registry = registry
        self.count = count
        self.prefix = prefix
        self.stop_timeout = stop_timeout
        self.policy = policy
        self.drain = drain  # reads what engines sent that the reactor has not read yet
        if launcher is None and launcher_factory is not None:  # ``launcher_factory(on_ended, engine_ids)``
            launcher = launcher_factory(self.process_ended, self.engine_ids())
        self.launcher = launcher if launcher is not None else LocalLauncher(reactor, connection_file, self.process_ended)
        self._listeners: list[Callable[[], None]] = []
        self.supervisors = {
            engine_id: EngineSupervisor(
                engine_id, policy, reactor, start=lambda eid: self.launcher.start([eid]),
                signal=self.launcher.signal, condemn=self._condemn, on_change=self._changed,
            )
            for engine_id in self.engine_ids()
        }
        self.memory: Optional[MemoryWatch] = None
        if policy.memory_limit is not None:
            self.memory = MemoryWatch(reactor, policy.memory_limit, self.launcher.running, self._over_limit, rss_of)

    def engine_ids(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]

    def is_local(self, engine_id: str) -> bool:
        return self.launcher.is_local(engine_id)

    # -- what the scheduler and the status source read -------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever an engine stops coming back, or comes into play."""
        self._listeners.append(listener)

    def coming(self) -> bool:
        """Whether some local engine runs or will be restarted (so engines may yet join)."""
        return any(sup.coming for sup in self.supervisors.values())

    def gave_up(self, engine_id: str) -> bool:
        """Whether that engine's supervisor gave up restarting it."""
        sup = self.supervisors.get(engine_id)
        return sup is not None and sup.phase == GIVEN_UP

    def supervision(self, engine_id: str) -> Optional[dict]:
        """``supervisor`` (its phase), ``restarts``, ``next_restart_at``, ``last_exit`` and ``rss``
        of a supervised engine; None for an engine this service does not supervise."""
        sup = self.supervisors.get(engine_id)
        if sup is None:
            return None
        info = sup.describe()
        info["rss"] = self.memory.last.get(engine_id) if self.memory is not None else None
        describe = getattr(self.launcher, "describe", None)  # a batch system's view: "slurm job 42_3 PENDING (...)"
        info["launcher"] = describe(engine_id) if describe is not None else None
        return info

    # -- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for sup in self.supervisors.values():
            sup.lifecycle.launch()
        if self.memory is not None:
            self.memory.start()

    def start_engine(self, engine_id: str) -> EngineProcess:
        """Start one more engine at once, unsupervised (the launcher's own ``start_engine``)."""
        return self.launcher.start_engine(engine_id)

    def process_ended(self, engine_id: str, pid: int, why: str) -> None:
        """The launcher's news: engine ``engine_id``'s process ``pid`` ended, ``why``.

        What the engine sent before it died is read first (``drain``): a result
        it sent just before a task of its killed it must count, or the finished
        task would be taken for the one that killed it.  Then its supervisor
        decides (so that the death is announced with the restart already
        planned), and the engine is declared dead.
        """
        self.drain()
        sup = self.supervisors.get(engine_id)
        if sup is not None:
            try:
                sup.process_ended(why, clean=why == CLEAN_EXIT)
            except NoTransition:  # a process its supervisor did not start (start_engine)
                self.log.warn("engine {engine} ended while its supervisor is {phase}", engine=engine_id, phase=sup.phase)
        record = self.registry.get(engine_id)
        if record is not None and record.state in ACTIVE_STATES and record.pid == pid:
            self.registry.mark_dead(record, why, self.reactor.seconds())
        else:
            self.log.info("engine {engine} process ended: {why}", engine=engine_id, why=why)

    def _condemn(self, engine_id: str, reason: str) -> None:
        """Declare a local engine dead before it is recycled: its task fails or moves with ``reason``."""
        record = self.registry.get(engine_id)
        if record is not None and record.state in ACTIVE_STATES and record.pid == self.launcher.running().get(engine_id):
            self.registry.condemn(record, reason, self.reactor.seconds())

    def _over_limit(self, engine_id: str, rss: int) -> None:
        sup = self.supervisors.get(engine_id)
        if sup is None:
            return  # started by hand (start_engine): not supervised, not recycled
        try:
            sup.lifecycle.over_limit(rss)
        except NoTransition:
            self.log.warn("engine {engine} is over its memory limit while {phase}", engine=engine_id, phase=sup.phase)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                self.log.failure("supervision listener {listener} failed", listener=listener)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self.memory is not None:
            self.memory.stop()
        for sup in self.supervisors.values():
            sup.lifecycle.stop()
        return self.launcher.stop(self.stop_timeout)
