"""The wire between the judge and the student's process: framing, and a data-only codec for what comes back.

Two directions, two rules:

* **judge → student**: requests are pickled (cloudpickle, so the checks' own probe classes travel by value).
  The judge is trusted; the student's process may unpickle what it likes.
* **student → judge**: replies are *data only*, decoded here without pickle: JSON for structure, raw bytes for
  tensors and arrays (dtype from an allow-list, shape checked against the byte count). Objects that are not data
  (a student's module, a bound method) come back as **handles**, numbers the student's process keeps a table of.
  A reply can therefore say anything about the student's answer, and nothing else: no code, no verdict.

Frames are an 8-byte big-endian length and the payload. Nothing in this module imports ``ddpm_ref`` or
``tests``: it is mounted alone into the sandbox.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

#: the largest frame either side accepts (a reply larger than this is an error, not an allocation)
MAX_FRAME = 1 << 30
MAX_DEPTH = 40

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
              torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)
}
_NP_DTYPES = {"float16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool",
              "complex64", "complex128"}


class ProtocolError(Exception):
    """A frame or reply that breaks the protocol (what a broken or hostile student process sends)."""


class Handle:
    """A reference to an object that stays in the student's process (the judge wraps it in a proxy)."""

    __slots__ = ("id", "type", "callable")

    def __init__(self, id: int, type: str, callable: bool) -> None:  # noqa: A002 (mirrors the wire names)
        self.id, self.type, self.callable = id, type, callable

    def __repr__(self) -> str:
        return f"<student's {self.type}>"


# ------------------------------------------------------------------------------------------------ arguments


def mutable_objects(value: Any, skip: Callable[[Any], bool]) -> list[Any]:
    """The objects a call may change, in a fixed order: tensors, generators, modules, optimizers and plain objects,
    walked through lists, tuples and dicts. Both sides walk a call's arguments with this one function (the judge its
    originals, the student's side their copies), so the two lists match item for item; ``skip`` leaves out the
    student's own objects (they stay on the student's side)."""
    found: list[Any] = []
    seen: set[int] = set()

    def walk(x: Any, depth: int) -> None:
        if depth > 20 or id(x) in seen or skip(x):
            return
        if isinstance(x, (list, tuple)):
            for v in x:
                walk(v, depth + 1)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v, depth + 1)
        elif isinstance(x, (torch.Tensor, torch.Generator, torch.nn.Module, torch.optim.Optimizer)) or (
                hasattr(x, "__dict__") and not isinstance(x, type) and not callable(x)):
            seen.add(id(x))
            found.append(x)

    walk(value, 0)
    return found


# ------------------------------------------------------------------------------------------------ framing


def write_frame(fd: int, payload: bytes) -> None:
    data = struct.pack(">Q", len(payload)) + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, limit: int = MAX_FRAME) -> bytes:
    (n,) = struct.unpack(">Q", read_exact(fd, 8))
    if n > limit:
        raise ProtocolError(f"a frame of {n} bytes is over the limit of {limit}")
    return read_exact(fd, n)


# ------------------------------------------------------------------------------------------------ encoding


def encode(value: Any, handle_of: Any) -> bytes:
    """``value`` as data: JSON for structure plus binary blobs. ``handle_of(obj) -> Handle`` is called for every
    object that is not data (the student's side keeps it and sends a number)."""
    blobs: list[bytes] = []

    def enc(x: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError("nested too deeply")
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return x if abs(x) < 2**63 else {"bigint": str(x)}
        if isinstance(x, float):
            return x if math.isfinite(x) else {"float": repr(x)}
        if isinstance(x, torch.Tensor) and type(x) in (torch.Tensor, torch.nn.Parameter) and not x.is_sparse:
            # a copy with unit strides: .contiguous() keeps the stride 0 of an expanded one-element tensor, which
            # cannot be viewed as bytes
            t = x.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            if str(t.dtype).removeprefix("torch.") not in _DTYPES:
                return handle(x)
            blobs.append(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            entry = {"tensor": len(blobs) - 1, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            if x.requires_grad:  # the graph stays with the student's side: a handle lets the judge call backward()
                entry["grad"] = handle_of(x).id
            return entry
        if isinstance(x, np.ndarray) and x.dtype.name in _NP_DTYPES:
            a = np.ascontiguousarray(x)
            blobs.append(a.tobytes())
            return {"array": len(blobs) - 1, "dtype": a.dtype.name, "shape": list(a.shape)}
        if isinstance(x, np.generic) and x.dtype.name in _NP_DTYPES:
            return enc(x.item(), depth + 1)
        if isinstance(x, complex):
            return {"complex": [enc(x.real, depth + 1), enc(x.imag, depth + 1)]}
        if isinstance(x, bytes):
            blobs.append(x)
            return {"bytes": len(blobs) - 1}
        if isinstance(x, torch.dtype):
            return {"dtype": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"device": str(x)}
        if isinstance(x, torch.Size):
            return {"size": list(x)}
        if isinstance(x, (list, tuple)) and type(x) not in (torch.Size,):
            return {"list" if isinstance(x, list) else "tuple": [enc(v, depth + 1) for v in x]}
        if isinstance(x, dict):  # OrderedDict (a state_dict) and other mappings arrive as dicts
            return {"dict": [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in x.items()]}
        if isinstance(x, Handle):
            return {"handle": x.id, "type": x.type, "callable": x.callable}
        return handle(x)

    def handle(x: Any) -> Any:
        h = handle_of(x)
        return {"handle": h.id, "type": h.type, "callable": h.callable}

    tree = json.dumps(enc(value, 0), ensure_ascii=True, allow_nan=False).encode()
    parts = [struct.pack(">II", len(tree), len(blobs)), tree]
    for blob in blobs:
        parts += [struct.pack(">Q", len(blob)), blob]
    return b"".join(parts)


def decode(payload: bytes) -> Any:
    """The value :func:`encode` wrote, rebuilt without running any code from the payload. Handles come back as
    :class:`Handle`. Anything malformed raises :class:`ProtocolError`."""
    try:
        n_tree, n_blobs = struct.unpack_from(">II", payload, 0)
        pos = 8
        tree = json.loads(payload[pos:pos + n_tree].decode("ascii"))
        pos += n_tree
        blobs: list[memoryview] = []
        view = memoryview(payload)
        for _ in range(n_blobs):
            (size,) = struct.unpack_from(">Q", payload, pos)
            pos += 8
            if pos + size > len(payload):
                raise ProtocolError("a blob runs past the end of the reply")
            blobs.append(view[pos:pos + size])
            pos += size
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed reply: {e}") from None

    def blob(i: Any) -> memoryview:
        if type(i) is not int or not 0 <= i < len(blobs):
            raise ProtocolError("a reference to a missing blob")
        return blobs[i]

    def shape_of(s: Any) -> list[int]:
        if type(s) is not list or len(s) > 16 or any(type(d) is not int or d < 0 for d in s):
            raise ProtocolError("a malformed shape")
        return s

    def dec(x: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError("nested too deeply")
        if x is None or type(x) in (bool, int, float, str):
            return x
        if type(x) is not dict or len(x) < 1:
            raise ProtocolError(f"unexpected {type(x).__name__} in a reply")
        if "tensor" in x:
            dtype = _DTYPES.get(x.get("dtype"))
            if dtype is None:
                raise ProtocolError(f"tensor dtype {x.get('dtype')!r} is not allowed")
            shape, raw = shape_of(x.get("shape")), blob(x["tensor"])
            numel = math.prod(shape)
            if numel * torch.empty((), dtype=dtype).element_size() != len(raw):
                raise ProtocolError("a tensor's bytes do not match its shape")
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if numel else torch.empty(0, dtype=torch.uint8)
            t = flat.view(dtype).reshape(shape).clone() if numel else torch.empty(shape, dtype=dtype)
            if "grad" in x:
                if type(x["grad"]) is not int or not t.is_floating_point():
                    raise ProtocolError("a malformed gradient reference")
                t.requires_grad_(True)
                t.judge_ref = x["grad"]
            return t
        if "array" in x:
            name = x.get("dtype")
            if name not in _NP_DTYPES:
                raise ProtocolError(f"array dtype {name!r} is not allowed")
            shape, raw = shape_of(x.get("shape")), blob(x["array"])
            if math.prod(shape) * np.dtype(name).itemsize != len(raw):
                raise ProtocolError("an array's bytes do not match its shape")
            return np.frombuffer(bytes(raw), dtype=name).reshape(shape).copy()
        if "bytes" in x:
            return bytes(blob(x["bytes"]))
        if "list" in x or "tuple" in x:
            items = x.get("list", x.get("tuple"))
            if type(items) is not list:
                raise ProtocolError("a malformed sequence")
            out = [dec(v, depth + 1) for v in items]
            return out if "list" in x else tuple(out)
        if "dict" in x:
            pairs = x["dict"]
            if type(pairs) is not list or any(type(p) is not list or len(p) != 2 for p in pairs):
                raise ProtocolError("a malformed mapping")
            result = {}
            for k, v in pairs:
                key = dec(k, depth + 1)
                try:
                    result[key] = dec(v, depth + 1)
                except TypeError:
                    raise ProtocolError("an unhashable key") from None
            return result
        if "handle" in x:
            if type(x["handle"]) is not int or type(x.get("type")) is not str or type(x.get("callable")) is not bool:
                raise ProtocolError("a malformed handle")
            return Handle(x["handle"], x["type"][:200], x["callable"])
        if "float" in x:
            if x["float"] not in ("nan", "inf", "-inf"):
                raise ProtocolError("a malformed float")
            return float(x["float"])
        if "bigint" in x:
            if type(x["bigint"]) is not str or len(x["bigint"]) > 4000:
                raise ProtocolError("a malformed integer")
            return int(x["bigint"])
        if "complex" in x:
            re, im = x["complex"]
            return complex(float(dec(re, depth + 1)), float(dec(im, depth + 1)))
        if "dtype" in x and len(x) == 1:
            dtype = _DTYPES.get(x["dtype"])
            if dtype is None:
                raise ProtocolError(f"dtype {x['dtype']!r} is not allowed")
            return dtype
        if "device" in x:
            if x["device"] not in ("cpu", "meta"):
                raise ProtocolError(f"device {x['device']!r} is not allowed")
            return torch.device(x["device"])
        if "size" in x:
            return torch.Size(shape_of(x["size"]))
        raise ProtocolError(f"unknown entry {sorted(x)[:3]} in a reply")

    try:
        return dec(tree, 0)
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise ProtocolError(f"malformed reply: {type(e).__name__}: {e}") from None
