"""Plain data to bytes and back: what crosses from a grading worker to the grader, and what
``labkit build`` records as the checks' expected values. Never code.

Plain data is ``None``, booleans, ints, floats, strings, tensors and numpy arrays of real,
integer or boolean dtype, and lists, tuples and dicts (string or int keys) of those. Anything
else is stored as a description: ``Unsupported("a tensor subclass")``. A function becomes a
:class:`FunctionHandle` (a number that stands for it where it lives).

The bytes are a safetensors file: a JSON header and raw tensor bytes, whose sizes the reader
checks against the header before it allocates anything, with nothing compressed. The structure
around the tensors is JSON in the header's metadata. :func:`decode` is written for bytes from
an adversary: every size is capped (:class:`Limits`), and anything malformed raises
:class:`PlainDataError`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FunctionHandle", "Limits", "PlainDataError", "Unsupported", "decode", "encode"]

_DTYPES = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


class PlainDataError(ValueError):
    """Bytes that are not plain data within the limits."""


@dataclass(frozen=True)
class Limits:
    """What one message may hold. The defaults fit every answer a lab asks for, many times."""

    max_bytes: int = 64 * 2**20  # the whole message, tensors included
    max_elements: int = 5_000_000  # one tensor
    max_items: int = 100_000  # lists, tuples, dicts and tensors, all together
    max_depth: int = 8
    max_string: int = 100_000  # characters of one string


class Unsupported:
    """Stands in for a value that is not plain data (a subclass, a meta tensor, an object)."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __repr__(self) -> str:
        return f"<{self.description}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unsupported) and other.description == self.description

    __hash__ = None  # type: ignore[assignment]


class FunctionHandle:
    """Stands in for a function that lives elsewhere (in a worker): ``number`` names it there."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("This function lives in another process; call it through t.call.")

    def __repr__(self) -> str:
        return f"<function #{self.number}>"


# ----- encoding ---------------------------------------------------------------------------------
def describe(value: Any) -> str:
    """A short, safe description of any object (never calls a method of a tensor subclass)."""
    kind = type(value)
    if kind is torch.Tensor:
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, torch.Tensor):
        return f"a {kind.__name__} (a subclass of torch.Tensor)"
    if isinstance(value, Unsupported):
        return value.description
    if value is None:
        return "None"
    module = "" if kind.__module__ == "builtins" else kind.__module__ + "."
    return f"a {module}{kind.__qualname__}"


class _Encoder:
    def __init__(self, limits: Limits, functions: dict | None) -> None:
        self.limits = limits
        self.tensors: dict[str, torch.Tensor] = {}
        self.functions = functions
        self.items = 0
        self.size = 0

    def tensor(self, value: torch.Tensor, kind: str) -> dict:
        if value.is_meta:
            return {"unsupported": "a tensor on the 'meta' device (it holds no values)"}
        if value.layout != torch.strided:
            return {"unsupported": f"a {value.layout} tensor (use .to_dense())"}
        if value.is_complex():
            return {"unsupported": f"a complex tensor of dtype {value.dtype}"}
        if value.dtype not in _DTYPES.values():
            return {"unsupported": f"a tensor of dtype {value.dtype}"}
        if value.numel() > self.limits.max_elements:
            return {"unsupported": f"a tensor with {value.numel()} elements (far too many)"}
        self.size += value.numel() * value.element_size()
        if self.size > self.limits.max_bytes:
            raise PlainDataError("more data than a message may hold")
        key = str(len(self.tensors))
        self.tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {kind: key}

    def value(self, value: Any, depth: int = 0) -> Any:
        self.items += 1
        if self.items > self.limits.max_items or depth > self.limits.max_depth:
            return {"unsupported": "a structure that is too large or too deeply nested"}
        kind = type(value)
        if value is None or kind is bool or kind is str:
            if kind is str and len(value) > self.limits.max_string:
                return {"unsupported": f"a string of {len(value)} characters (far too long)"}
            return value
        if kind is int:
            return value if abs(value) < 2**63 else {"float": float(value)}
        if kind is float:
            return value if math.isfinite(value) else {"float": repr(value)}
        if kind is torch.Tensor:
            return self.tensor(value, "tensor")
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            if isinstance(value, numpy.ndarray):
                if value.dtype.kind not in "biuf" or value.dtype.itemsize > 8:
                    return {"unsupported": f"a numpy array of dtype {value.dtype}"}
                if value.size > self.limits.max_elements:
                    return {"unsupported": f"a numpy array with {value.size} elements"}
                return self.tensor(torch.from_numpy(numpy.array(value, copy=True)), "numpy")
            if isinstance(value, numpy.generic) and value.dtype.kind in "biuf":
                return {"numpy_scalar": float(value)}
        if kind in (list, tuple):
            if len(value) > self.limits.max_items:
                return {"unsupported": f"a {kind.__name__} of {len(value)} items (far too many)"}
            items = [self.value(v, depth + 1) for v in value]
            return items if kind is list else {"tuple": items}
        if kind is dict:
            if len(value) > self.limits.max_items:
                return {"unsupported": f"a dict of {len(value)} items (far too many)"}
            if not all(type(k) in (str, int) for k in value):
                return {"unsupported": "a dict whose keys are not strings or ints"}
            return {"dict": [[k, self.value(v, depth + 1)] for k, v in value.items()]}
        if callable(value) and not isinstance(value, torch.Tensor):
            if self.functions is None:
                return {"unsupported": "a function"}
            number = len(self.functions) + 1
            self.functions[number] = value
            return {"function": number}
        return {"unsupported": describe(value)}


def encode(value: Any, limits: Limits = Limits(), functions: dict | None = None) -> bytes:
    """``value`` as bytes. Functions inside it are stored in ``functions`` (number -> function)
    and encoded as their number; without ``functions`` they are unsupported."""
    from safetensors.torch import save

    encoder = _Encoder(limits, functions)
    structure = encoder.value(value)
    data = save(encoder.tensors, metadata={"plaindata": json.dumps(structure)})
    if len(data) > limits.max_bytes:
        raise PlainDataError("more data than a message may hold")
    return data


# ----- decoding ---------------------------------------------------------------------------------
def decode(data: bytes, limits: Limits = Limits()) -> Any:
    """The value that :func:`encode` wrote; raises :class:`PlainDataError` for anything else."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > limits.max_bytes:
        raise PlainDataError("not bytes, or more than a message may hold")
    header = _header(data, limits)
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("plaindata"), str):
        raise PlainDataError("no structure in the message")
    tensors = _tensors(data, header, limits)
    try:
        structure = json.loads(metadata["plaindata"])
    except (ValueError, RecursionError) as err:
        raise PlainDataError("the structure is not JSON") from err
    count = [0]
    return _build(structure, tensors, limits, 0, count)


def _header(data: bytes, limits: Limits) -> dict:
    if len(data) < 8:
        raise PlainDataError("too short")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8 or size > 16 * 2**20:
        raise PlainDataError("the header does not fit")
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError) as err:
        raise PlainDataError("the header is not JSON") from err
    if not isinstance(header, dict) or len(header) > limits.max_items + 1:
        raise PlainDataError("the header is not a table of tensors")
    return header


def _tensors(data: bytes, header: dict, limits: Limits) -> dict[str, torch.Tensor]:
    start = 8 + int.from_bytes(data[:8], "little")
    tensors = {}
    for key, info in header.items():
        if not isinstance(info, dict):
            raise PlainDataError("a tensor entry is not a table")
        dtype = _DTYPES.get(str(info.get("dtype", "")).lower())
        dtype = dtype or {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
                          "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
                          "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                          "F64": torch.float64}.get(str(info.get("dtype")))  # fmt: skip
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (
            dtype is None
            or not isinstance(shape, list)
            or not all(type(n) is int and 0 <= n for n in shape)
            or len(shape) > 16
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(n) is int for n in offsets)
        ):
            raise PlainDataError("a malformed tensor entry")
        numel = math.prod(shape)
        width = torch.empty((), dtype=dtype).element_size()
        lo, hi = offsets
        if numel > limits.max_elements or not 0 <= lo <= hi or hi - lo != numel * width:
            raise PlainDataError("a tensor's size does not match its bytes, or is too large")
        if start + hi > len(data):
            raise PlainDataError("a tensor lies outside the message")
        raw = bytearray(data[start + lo : start + hi])
        flat = torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        tensors[key] = flat.reshape(shape).clone()
    return tensors


def _build(node: Any, tensors: dict, limits: Limits, depth: int, count: list[int]) -> Any:
    count[0] += 1
    if count[0] > limits.max_items or depth > limits.max_depth + 1:  # + 1: the cut-off leaf
        raise PlainDataError("a structure that is too large or too deeply nested")
    if node is None or type(node) in (bool, int, float):
        return node
    if type(node) is str:
        if len(node) > limits.max_string:
            raise PlainDataError("a string that is too long")
        return node
    if type(node) is list:
        return [_build(v, tensors, limits, depth + 1, count) for v in node]
    if type(node) is not dict or len(node) != 1:
        raise PlainDataError("an unknown node")
    ((kind, inner),) = node.items()
    if kind == "tuple" and type(inner) is list:
        return tuple(_build(v, tensors, limits, depth + 1, count) for v in inner)
    if kind == "dict" and type(inner) is list:
        out = {}
        for pair in inner:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) not in (str, int):
                raise PlainDataError("a malformed dict")
            out[pair[0]] = _build(pair[1], tensors, limits, depth + 1, count)
        return out
    if kind in ("tensor", "numpy") and type(inner) is str and inner in tensors:
        tensor = tensors[inner]
        return tensor if kind == "tensor" else tensor.numpy()
    if kind == "numpy_scalar" and type(inner) in (int, float):
        import numpy

        return numpy.float64(inner)
    if kind == "float" and type(inner) in (str, int, float):
        try:
            return float(inner)
        except ValueError as err:
            raise PlainDataError("a malformed float") from err
    if kind == "function" and type(inner) is int:
        return FunctionHandle(inner)
    if kind == "unsupported" and type(inner) is str:
        return Unsupported(inner[:500])
    raise PlainDataError("an unknown node")
