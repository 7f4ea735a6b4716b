"""labkit.plaindata: what a worker sends back is data, read defensively, capped before anything
is allocated."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from labkit.plaindata import FunctionHandle, Limits, PlainDataError, Unsupported, decode, encode


def test_plain_values_come_back_as_they_went() -> None:
    value = {
        "t": torch.arange(6.0).view(2, 3),
        "pair": (1, 2.5, "x", None, True),
        "list": [np.arange(4), np.float32(2.0), torch.tensor(True)],
        3: torch.zeros(0, 5, dtype=torch.int64),
        "inf": float("inf"),
    }
    back = decode(encode(value))
    assert torch.equal(back["t"], value["t"]) and back["pair"] == value["pair"]
    assert isinstance(back["list"][0], np.ndarray) and back["list"][1] == 2.0
    assert back[3].shape == (0, 5) and back["inf"] == float("inf")


def test_what_is_not_data_becomes_a_description() -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    back = decode(encode([Evil(), torch.zeros(2).as_subclass(torch.nn.Parameter),
                          torch.zeros(3, dtype=torch.complex64), lambda: 1]))  # fmt: skip
    assert all(isinstance(v, Unsupported) for v in back)
    assert "subclass" in back[1].description and "complex" in back[2].description
    functions = {}
    assert isinstance(decode(encode(lambda: 1, functions=functions)), FunctionHandle)


def test_sizes_are_capped() -> None:
    limits = Limits(max_bytes=1 << 16, max_elements=1000, max_items=50, max_depth=3)
    assert isinstance(decode(encode(torch.zeros(2000), limits)), Unsupported)
    assert isinstance(decode(encode([[[[[1]]]]], limits), limits)[0][0][0][0], Unsupported)
    with pytest.raises(PlainDataError):
        encode([torch.zeros(900)] * 30, limits)  # 108 KB of tensors against 64 KB


def _forged(header: dict, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        struct.pack("<Q", 2**60) + b"{}",  # a header larger than the message
        _forged(
            {
                "__metadata__": {"plaindata": '{"tensor": "0"}'},
                "0": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]},
            }
        ),  # fmt: skip
        _forged(
            {
                "__metadata__": {"plaindata": '{"tensor": "0"}'},
                "0": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            },
            b"\x00" * 8,
        ),  # fmt: skip
        _forged({"__metadata__": {"plaindata": '{"eval": "os.system"}'}}),
        _forged({"__metadata__": {"plaindata": "[" * 10000 + "]" * 10000}}),
        _forged({"__metadata__": {"plaindata": '{"tensor": "missing"}'}}),
        _forged({"0": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4),
    ],
)
def test_forged_bytes_are_refused_without_allocating(data: bytes) -> None:
    with pytest.raises(PlainDataError):
        decode(data)
