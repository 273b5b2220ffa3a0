"""The student's side of the judge: runs inside the sandbox, holds the student's code, answers requests.

Started as ``python runtime.py READ_FD WRITE_FD`` with ``protocol.py`` beside it and nothing of ``tests`` in reach.
The first request loads the notebook's cells; each later one calls, inspects or iterates an object of the
student's. Arguments arrive pickled (by value: a copy of the checks' tensors, probes, optimizers and generators);
what the call did to them goes back with the result (:func:`state`), so that the judge's own objects end up as if
the call had run there. Nothing here decides anything: the judge compares.
"""

from __future__ import annotations

import builtins
import os
import pickle
import sys
import traceback
from typing import Any

import protocol  # mounted beside this file
import torch
from torch import nn

#: exception types that keep their name on the way back (anything else becomes RuntimeError)
PLAIN_ERRORS = {name for name, obj in vars(builtins).items()
                if isinstance(obj, type) and issubclass(obj, BaseException)}


class Runtime:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.rfd, self.wfd = read_fd, write_fd
        self.objects: dict[int, Any] = {}  # handle id → object
        self.ids: dict[int, int] = {}  # id(object) → handle id
        self.calls: dict[int, list[Any]] = {}  # call id → the by-value objects that call received
        self.from_handles: set[int] = set()
        self.ns: dict[str, Any] = {}
        self.cell_files: set[str] = set()

    # -------------------------------------------------------------------------------------------- handles

    def handle_of(self, obj: Any) -> protocol.Handle:
        key = id(obj)
        if key not in self.ids:
            hid = len(self.objects) + 1
            self.objects[hid], self.ids[key] = obj, hid
        hid = self.ids[key]
        return protocol.Handle(hid, type(obj).__qualname__[:80], callable(obj))

    def resolve(self, hid: int) -> Any:
        if hid not in self.objects:
            raise KeyError(f"no object {hid}")
        obj = self.objects[hid]
        self.from_handles.add(id(obj))
        return obj

    def unpickle(self, payload: bytes) -> Any:
        runtime = self

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid: Any) -> Any:
                return runtime.resolve(pid[1])

        return Unpickler(__import__("io").BytesIO(payload)).load()

    # -------------------------------------------------------------------------------------------- write-back

    def mutable_objects(self, value: Any) -> list[Any]:
        """The copies a call may change (:func:`protocol.mutable_objects`; the student's objects stay out)."""
        return protocol.mutable_objects(value, lambda x: id(x) in self.from_handles)

    @staticmethod
    def snapshot(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.detach().clone()
        if isinstance(obj, nn.Module):
            return {name: (p.detach().clone(), None if p.grad is None else p.grad.clone())
                    for name, p in obj.named_parameters()}
        if isinstance(obj, (torch.Generator, torch.optim.Optimizer)):
            return None
        return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in data_attrs(obj).items()}

    def state(self, obj: Any, before: Any) -> Any:
        """What became of one by-value object: data only (None when nothing is to be copied back)."""
        if isinstance(obj, torch.Tensor):
            same = before.shape == obj.shape and before.dtype == obj.dtype and torch.equal(before, obj.detach())
            return None if same else obj.detach()
        if isinstance(obj, torch.Generator):
            return obj.get_state()
        if isinstance(obj, nn.Module):
            params, grads = {}, {}
            for name, p in obj.named_parameters():
                old = (before or {}).get(name)
                if old is None or not torch.equal(old[0], p.detach()):
                    params[name] = p.detach()
                old_grad = None if old is None else old[1]
                if (p.grad is None) != (old_grad is None) or (p.grad is not None and not torch.equal(p.grad,
                                                                                                     old_grad)):
                    grads[name] = p.grad
            attrs = {}
            for name, module in obj.named_modules():
                attrs[name] = {**data_attrs(module), "training": module.training}
            return {"params": params, "grads": grads, "buffers": dict(obj.named_buffers()), "attrs": attrs}
        if isinstance(obj, torch.optim.Optimizer):
            sd = obj.state_dict()
            return sd if is_data(sd) else None
        changed = {k: v for k, v in data_attrs(obj).items() if not _same(v, (before or {}).get(k, _MISSING))}
        return {"attrs": {"": changed}} if changed else None

    # -------------------------------------------------------------------------------------------- requests

    def reply(self, value: Any) -> None:
        protocol.write_frame(self.wfd, protocol.encode(value, self.handle_of))

    def error(self, e: BaseException) -> dict[str, Any]:
        kind = type(e).__name__
        tb = traceback.extract_tb(e.__traceback__)
        own = [f for f in tb if f.filename in self.cell_files]
        where = f" (line {own[-1].lineno} of {own[-1].name})" if own else ""
        withheld, how = getattr(e, "ddpm_withheld", None), getattr(e, "ddpm_how", None)
        return {"err": {"type": kind if kind in PLAIN_ERRORS else "RuntimeError", "name": kind,
                        "msg": str(e)[:4000], "where": where, "withheld": withheld, "how": how}}

    def invoke(self, fn: Any, args: tuple, kwargs: dict, rng: torch.Tensor, grads: list[Any]) -> dict[str, Any]:
        """Call with the judge's random state and the gradients its objects carry; return the result, what became
        of the arguments, the new random state."""
        changed = self.mutable_objects((args, kwargs))
        for obj, grad in zip(changed, grads, strict=False):
            if isinstance(obj, torch.Tensor) and grad is not None:
                obj.grad = grad
            elif isinstance(obj, nn.Module) and grad:
                params = dict(obj.named_parameters())
                for name, g in grad.items():
                    params[name].grad = g
        before = [self.snapshot(o) for o in changed]
        torch.set_rng_state(rng)
        result = fn(*args, **kwargs)
        call_id = len(self.calls) + 1
        self.calls[call_id] = changed
        wb = [self.state(o, b) for o, b in zip(changed, before, strict=True)]
        return {"ok": result, "wb": wb, "call": call_id, "rng": torch.get_rng_state()}

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run the notebook's cells in one namespace, then point the other exercises' names at ``ddpm_ref``."""
        os.chdir(spec["cwd"])
        sys.path.insert(0, spec["cwd"])
        self.ns = {"__name__": "__main__", "__builtins__": builtins}
        errors: dict[str, str] = {}
        for filename, source, names in spec["cells"]:
            self.cell_files.add(filename)
            try:
                exec(compile(source, filename, "exec"), self.ns)  # noqa: S102 (the student's code, sandboxed)
            except BaseException as e:  # noqa: BLE001 (SystemExit from a cell must not end the judge's process)
                tb = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
                where = f" (line {tb[-1].lineno})" if tb else ""
                for n in names:
                    errors.setdefault(n, f"{filename} raised {type(e).__name__}: {str(e)[:300]}{where}")
        import ddpm_ref

        for name in spec["others"]:  # the other exercises are the reference's (withheld ones: stubs)
            if hasattr(ddpm_ref, name):
                self.ns[name] = getattr(ddpm_ref, name)
        return {"errors": errors}

    def lookup(self, name: str) -> dict[str, Any]:
        if name not in self.ns:
            return {"found": False}
        obj = self.ns[name]
        withheld = getattr(obj, "__ddpm_withheld__", None)
        if isinstance(obj, type) and withheld is not None and "__ddpm_withheld__" not in vars(obj):
            return {"found": True, "value": obj, "subclasses": withheld}
        return {"found": True, "value": obj, "withheld": withheld}

    def handle(self, request: tuple) -> Any:
        op, *rest = request
        if op == "load":
            return self.load(*rest)
        if op == "lookup":
            return self.lookup(*rest)
        if op == "call":
            hid, *call = rest
            return self.invoke(self.resolve(hid), *call)
        if op == "apply":
            return self.invoke(*rest)
        if op == "getattr":
            hid, name = rest
            return {"ok": getattr(self.resolve(hid), name)}
        if op == "setattr":
            hid, name, value = rest
            setattr(self.resolve(hid), name, value)
            return {"ok": None}
        if op == "iter":
            return {"ok": self.handle_of(iter(self.resolve(rest[0])))}
        if op == "next":
            try:
                return {"ok": next(self.resolve(rest[0])), "more": True}
            except StopIteration:
                return {"ok": None, "more": False}
        if op == "len":
            return {"ok": len(self.resolve(rest[0]))}
        if op == "getitem":
            hid, key = rest
            return {"ok": self.resolve(hid)[key]}
        if op == "repr":
            return {"ok": repr(self.resolve(rest[0]))[:2000]}
        if op == "backward":
            hid, call_id, gradient = rest
            self.resolve(hid).backward(gradient)
            changed = self.calls.get(call_id, [])
            return {"ok": None, "wb": [self.state(o, None) if isinstance(o, nn.Module) else None for o in changed]}
        raise ValueError(f"unknown request {op!r}")

    def serve(self) -> None:
        while True:
            try:
                payload = protocol.read_frame(self.rfd)
            except EOFError:
                return
            try:
                answer = self.handle(self.unpickle(payload))
            except BaseException as e:  # noqa: BLE001 (whatever the student's code raised goes back as data)
                answer = self.error(e)
            stubs = sys.modules.get("ddpm_ref._withheld")
            attempts = getattr(stubs, "ATTEMPTS", None)
            if isinstance(attempts, list) and attempts:  # a refused use of the reference, even if it was caught
                answer["withheld"] = [str(a) for a in attempts[:20]]
                attempts.clear()
            try:
                self.reply(answer)
            except BaseException as e:  # noqa: BLE001 (a result that cannot be encoded)
                self.reply(self.error(e))


_MISSING = object()


def data_attrs(obj: Any) -> dict[str, Any]:
    """An object's public attributes that are plain data (what a call may have recorded on a probe)."""
    return {k: v for k, v in vars(obj).items() if not k.startswith("_") and k != "training" and is_data(v)}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.detach(), b))
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def is_data(x: Any, depth: int = 0) -> bool:
    """Plain data that the codec carries by value (no handles): numbers, strings, tensors and their containers."""
    if depth > 12:
        return False
    if x is None or isinstance(x, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        return True
    if isinstance(x, torch.Tensor):
        return type(x) in (torch.Tensor, nn.Parameter)
    if isinstance(x, (list, tuple)):
        return len(x) < 100_000 and all(is_data(v, depth + 1) for v in x)
    if isinstance(x, dict):
        return all(is_data(k, depth + 1) and is_data(v, depth + 1) for k, v in x.items())
    return False


def main() -> None:
    read_fd, write_fd = int(sys.argv[1]), int(sys.argv[2])
    sys.argv = ["runtime"]
    torch.set_num_threads(int(os.environ.get("DDPM_JUDGE_THREADS", "1")))
    Runtime(read_fd, write_fd).serve()


if __name__ == "__main__":
    main()
