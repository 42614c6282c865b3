"""The controller's log lines for engine events: one line per registry event."""
from __future__ import annotations

from twisted.logger import Logger, LogLevel

from ipcluster.controller.registry import EngineEvent, EngineRecord

log = Logger(namespace="ipcluster.controller")

#: Per event: the level and the line (``{engine}``, ``{where}`` and ``{reason}`` are filled in).
LINES = {
    EngineEvent.REGISTERING: (LogLevel.info, "engine {engine} registering ({where})"),
    EngineEvent.JOINED: (LogLevel.info, "engine {engine} joined ({where})"),
    EngineEvent.BUSY: (LogLevel.warn, "engine {engine} busy: {reason}"),
    EngineEvent.ALIVE: (LogLevel.info, "engine {engine} alive again {reason}"),
    EngineEvent.DEAD: (LogLevel.error, "engine {engine} dead ({where}): {reason}"),
    EngineEvent.LEFT: (LogLevel.info, "engine {engine} left ({where}): {reason}"),
    EngineEvent.PURGED: (LogLevel.warn, "engine {engine} registration purged: {reason}"),
}


def log_engine_event(event: EngineEvent, record: EngineRecord, reason: str) -> None:
    """A registry listener: log ``event`` of ``record``."""
    level, line = LINES[event]
    log.emit(level, line, engine=record.id, where=f"{record.host} pid {record.pid}", reason=reason)
