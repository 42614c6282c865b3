"""What the controller can be told: :class:`ControllerConfig` (see ``twistd ipcluster --help``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import attr

from ipcluster import connection
from ipcluster.controller.control import DEFAULT_TIMEOUT
from ipcluster.controller.registry import DEFAULT_DEAD_ENGINE_TTL
from ipcluster.controller.heartmonitor import DEFAULT_MISSES, DEFAULT_PERIOD
from ipcluster.controller.supervisor import DEFAULT_RESTART_LIMIT, DEFAULT_RESTART_WINDOW, RestartPolicy
from ipcluster.scheduler.noengines import DEFAULT_NO_ENGINE_TIMEOUT
from ipcluster.scheduler.recovery import DEFAULT_RECOVERY_GRACE
from ipcluster.scheduler.scheduler import DEFAULT_PREFETCH
from ipcluster.store import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_RESULT
from ipcluster.transport import DEFAULT_MAX_BATCH, DEFAULT_MAX_MESSAGE_SIZE


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
    max_message_size: int = attr.ib(default=DEFAULT_MAX_MESSAGE_SIZE)
    max_batch: int = attr.ib(default=DEFAULT_MAX_BATCH)
    prefetch: int = attr.ib(default=DEFAULT_PREFETCH)
    store: str = attr.ib(default="sqlite")
    store_max_age: Optional[float] = attr.ib(default=7 * 24 * 3600.0)
    store_max_tasks: Optional[int] = attr.ib(default=1_000_000)
    # Supervision of the local engines (see controller/supervisor.py) and what happens without engines.
    restart_limit: int = attr.ib(default=DEFAULT_RESTART_LIMIT)
    restart_window: float = attr.ib(default=DEFAULT_RESTART_WINDOW)
    engine_memory_limit: Optional[int] = attr.ib(default=None)
    no_engine_timeout: Optional[float] = attr.ib(default=DEFAULT_NO_ENGINE_TIMEOUT)
    dead_engine_ttl: Optional[float] = attr.ib(default=DEFAULT_DEAD_ENGINE_TTL)
    # Crash safety (see store/__init__.py and scheduler/recovery.py).
    store_max_payload: int = attr.ib(default=DEFAULT_MAX_PAYLOAD)
    store_max_result: int = attr.ib(default=DEFAULT_MAX_RESULT)
    recovery_grace: float = attr.ib(default=DEFAULT_RECOVERY_GRACE)

    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy(limit=self.restart_limit, window=self.restart_window, memory_limit=self.engine_memory_limit)

    @property
    def connection_file(self) -> Path:
        return self.data_dir / connection.CONNECTION_FILE

    @property
    def store_path(self) -> Path:
        return self.data_dir / "tasks.sqlite"
