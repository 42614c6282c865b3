"""A task's future: a ``concurrent.futures.Future`` with the task's id, engine and output."""
from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Optional

from ipcluster import errors
from ipcluster.client.core import TaskResult

if TYPE_CHECKING:
    from ipcluster.client.sync import Client


class TaskFuture(Future):
    """A ``concurrent.futures.Future`` for one task, with its id, engine and output.

    It stays pending until the result arrives.  ``cancel()`` asks the
    controller to remove the task if it has not started.
    """

    def __init__(self, task_id: str, client: Optional["Client"] = None) -> None:
        super().__init__()
        self.task_id = task_id
        self.engine: Optional[str] = None
        self.stdout = ""
        self.stderr = ""
        self._client = client
        self._cancelling = False
        self._callback = self._deliver  # what the client core calls with the result

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} on {self.engine} {self._state.lower()}>"

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if self._client is None or self._client._closed:
            return False
        self._cancelling = True
        try:
            removed = self._client._call("cancel", {"task": self.task_id}, self._client.timeout)
        except errors.ClusterError:
            removed = False
        finally:
            self._cancelling = False
        if removed:
            self._client._core.forget(task_id=self.task_id, on_result=self._callback)
            return super().cancel()
        return False

    def _deliver(self, result: TaskResult) -> None:
        if self.done():
            return
        if self._cancelling and isinstance(result.value, errors.TaskAborted):
            return  # cancel() is about to mark it cancelled
        self.engine = result.engine
        self.stdout, self.stderr = result.stdout, result.stderr
        if not self.set_running_or_notify_cancel():
            return
        if result.ok:
            self.set_result(result.value)
        else:
            self.set_exception(result.value)
