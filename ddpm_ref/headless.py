"""Headless notebook execution that never hangs on a lost message: every runner of the project uses it.

The site build (``solutions/build_site.py``), the grader (``CourseExecute`` in ``nbgrader_config.py``), the tests
and ``data_scripts/headless_repeat.py`` run notebooks through :class:`RobustExecution` (a mixin for nbclient's
``NotebookClient`` and its subclasses). On top of nbclient it:

* starts the kernel with ``DDPM_HEADLESS=1`` (and ``DDPM_PROGRESS=log`` unless set), so the lessons draw static
  pictures and text progress bars, and create no widget (:func:`ddpm_ref.frontend.widget_frontend`);
* **recovers a stall without running the cell again.** Once the shell channel has been silent for ``probe_after``
  seconds it sends a ``kernel_info_request`` on the same connection (one at a time while the cell visibly runs).
  The kernel answers one connection's requests in order, so that reply arriving first proves the cell finished and
  its reply was lost: the reply is rebuilt from what the cell published on IOPub (outputs, error, execution count).
  While the kernel has said nothing about the cell (or has gone idle), a ``kernel_info_request`` also comes from a
  new connection: ipykernel 7.0-7.3 can leave a request unread on its shell socket until a new connection arrives
  (ipykernel#1554), and the woken request then runs once, as usual. Side effects (a training step) happen once;
* names the notebook and the cell (index, first line) in every timeout, and waits up to 30 s (nbclient: 4 s) for
  a cell's last IOPub messages, which lag behind its reply on a busy machine. ``client.stalls``: what was recovered.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from queue import Empty
from typing import Any

import nbformat
from jupyter_client.session import Session
from nbclient import NotebookClient
from nbclient.client import timestamp
from nbclient.exceptions import CellTimeoutError
from nbclient.util import run_sync
from traitlets import Bool, Float, Integer, Unicode

from .frontend import HEADLESS_ENV


def first_line(source: str, width: int = 70) -> str:
    """The first non-empty line of a cell's source, cut to ``width`` characters."""
    line = next((s.strip() for s in source.splitlines() if s.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


class RobustExecution(NotebookClient):
    """nbclient's executor with stall recovery, named timeouts and widget-free kernels (see the module)."""

    label = Unicode("notebook", help="the notebook's name in messages (a lesson, a path)").tag(config=True)
    probe_after = Float(10.0, help="seconds of shell silence before the kernel is probed").tag(config=True)
    recover_stalls = Bool(True, help="probe a silent kernel and rebuild a lost execute_reply").tag(config=True)
    iopub_timeout = Integer(30, help="seconds to wait for a cell's last IOPub output after its reply").tag(config=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stalls: list[dict[str, Any]] = []  # one per recovery: cell, first_line, kind, seconds
        self._heard: dict[str, dict[str, Any]] = {}
        self._where: tuple[int, Any] = (-1, None)

    def where(self) -> str:
        """``label: cell N (`first line`)`` for the cell being run."""
        index, cell = self._where
        return f"{self.label}: cell {index} (`{first_line(getattr(cell, 'source', '') or '')}`)"

    async def async_start_new_kernel(self, **kwargs: Any) -> None:
        env = {"DDPM_PROGRESS": "log", **(kwargs.get("env") or os.environ), HEADLESS_ENV: "1"}  # no live bars
        await super().async_start_new_kernel(**{**kwargs, "env": env})

    async def async_execute_cell(self, cell: Any, cell_index: int, execution_count: int | None = None,
                                 store_history: bool = True) -> Any:
        self._where = (cell_index, cell)
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

    # nbclient binds its sync entry points to its own coroutines (``execute_cell = run_sync(async_execute_cell)``),
    # and nbconvert's ExecutePreprocessor (so nbgrader) calls those: they must reach the overrides here
    def start_new_kernel(self, **kwargs: Any) -> None:
        return run_sync(self.async_start_new_kernel)(**kwargs)

    def start_new_kernel_client(self) -> Any:
        return run_sync(self.async_start_new_kernel_client)()

    def execute_cell(self, cell: Any, cell_index: int, execution_count: int | None = None,
                     store_history: bool = True) -> Any:
        return run_sync(self.async_execute_cell)(cell, cell_index, execution_count, store_history)

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        heard = self._heard.setdefault(msg["parent_header"].get("msg_id"), {})
        content = msg.get("content", {})
        if msg["msg_type"] == "status" and content.get("execution_state") == "idle":
            heard["idle"] = time.monotonic()
        elif msg["msg_type"] == "error":
            heard["error"] = {k: content.get(k) for k in ("ename", "evalue", "traceback")}
        heard["count"] = content.get("execution_count", heard.get("count"))
        heard.setdefault("first", time.monotonic())
        return super().process_message(msg, cell, cell_index)

    def _rebuilt_reply(self, msg_id: str) -> dict[str, Any]:
        heard = self._heard.get(msg_id, {})
        content = ({"status": "error", **heard["error"]} if "error" in heard
                   else {"status": "ok", "user_expressions": {}, "payload": []})
        content["execution_count"] = heard.get("count")
        return {"header": {"msg_type": "execute_reply"}, "parent_header": {"msg_id": msg_id}, "metadata": {},
                "content": content, "msg_type": "execute_reply", "rebuilt": True}

    async def _async_poll_for_reply(self, msg_id: str, cell: Any, timeout: int | None,
                                    task_poll_output_msg: asyncio.Future, task_poll_kernel_alive: asyncio.Future
                                    ) -> dict[str, Any]:
        assert self.kc is not None
        start = last = time.monotonic()
        deadline = None if timeout is None else start + timeout
        probes: set[str] = set()  # kernel_info_requests sent on this connection for this cell
        unread, reply, wakers = False, None, []  # unread: the kernel had said nothing of the cell when woken
        try:
            while reply is None:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    task_poll_kernel_alive.cancel()
                    await self._async_check_alive()
                    reply = await self._async_handle_timeout(timeout, cell)  # type: ignore[arg-type]
                    deadline = time.monotonic() + timeout  # type: ignore[operator]  # the interrupted reply
                    if reply is not None:  # nbgrader's error reply: a cell that ignores the interrupt gets 4 s
                        reply.update(parent_header={"msg_id": msg_id}, patience=min(4, self.iopub_timeout))
                    continue
                wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - now))
                try:
                    msg = await asyncio.wait_for(self.kc.shell_channel.get_msg(timeout=wait), wait + 5)
                except (Empty, asyncio.TimeoutError, TimeoutError):
                    heard = self._heard.get(msg_id, {})
                    running = "first" in heard and "idle" not in heard
                    if self.recover_stalls and time.monotonic() - last >= self.probe_after and not (running and probes):
                        if not running:  # a request left unread wakes only on a new connection (ipykernel#1554)
                            unread = unread or "first" not in heard
                            wakers.append(self._wake())
                        probes.add(self.kc.kernel_info())
                        last = time.monotonic()
                    continue
                last = time.monotonic()
                parent = msg["parent_header"].get("msg_id")
                if parent == msg_id:
                    reply = msg
                    if self.record_timing:
                        cell["metadata"]["execution"]["shell.execute_reply"] = timestamp(msg)
                    if unread:
                        self._stall("unread request woken", cell, start)
                elif parent in probes:  # answered in order on this connection: the cell's reply was lost
                    reply = self._rebuilt_reply(msg_id)
                    self._stall("lost reply rebuilt", cell, start)
        finally:
            for waker in wakers:
                waker.stop_channels()
        try:
            await asyncio.wait_for(task_poll_output_msg, reply.get("patience", self.iopub_timeout))
        except (asyncio.TimeoutError, TimeoutError):
            if self.raise_on_iopub_timeout and not reply.get("rebuilt"):  # a rebuilt one: the kernel had finished
                task_poll_kernel_alive.cancel()
                raise CellTimeoutError(f"{self.where()}: the cell's output did not end after its reply") from None
            self.log.warning("%s: timeout waiting for IOPub output", self.where())
        task_poll_kernel_alive.cancel()
        self._heard.pop(msg_id, None)
        return reply

    def _wake(self) -> Any:
        """A kernel_info_request from a new connection, with its own session: the same identity would take over
        this client's connection (ROUTER_HANDOVER), and the replies meant for it."""
        session = Session(key=self.km.session.key, signature_scheme=self.km.session.signature_scheme)
        waker = self.km.client(session=session)
        waker.start_channels(iopub=False, stdin=False, hb=False, control=False)
        waker.kernel_info()
        return waker

    def _stall(self, kind: str, cell: Any, start: float) -> None:
        event = {"cell": self._where[0], "first_line": first_line(cell.source), "kind": kind,
                 "seconds": round(time.monotonic() - start, 1)}
        self.stalls.append(event)
        self.log.warning("%s: stall recovered (%s after %.0f s)", self.where(), kind, event["seconds"])

    async def _async_handle_timeout(self, timeout: int, cell: Any = None) -> None | dict[str, Any]:
        self.log.error("%s: no reply after %d s%s", self.where(), timeout,
                       ", interrupting the kernel" if self.interrupt_on_timeout else "")
        if self.interrupt_on_timeout:
            return await super()._async_handle_timeout(timeout, cell)
        raise CellTimeoutError(f"{self.where()} ran over its {timeout} s per-cell timeout")


class HeadlessClient(RobustExecution):
    """The headless notebook runner of the site build, the tests and the scripts."""


def execute_notebook(nb: Any, *, label: str, cwd: str | Path, timeout: int | None,
                     env: Mapping[str, str] | None = None, client_class: type = HeadlessClient,
                     **kwargs: Any) -> Any:
    """Run ``nb`` (a NotebookNode or a path) in a fresh ``python3`` kernel in ``cwd``, ``timeout`` seconds a cell;
    returns the client (``.nb``, ``.stalls``). Raises CellExecutionError, or CellTimeoutError naming the cell."""
    nb = nb if hasattr(nb, "cells") else nbformat.read(nb, as_version=4)
    client = client_class(nb, timeout=timeout, kernel_name="python3", label=label,
                          resources={"metadata": {"path": str(cwd)}}, **kwargs)
    client.execute(**({} if env is None else {"env": dict(env)}))
    return client
