"""The pickle-free structure codec: bit-exact round trips and rejection of bad bytes."""

from __future__ import annotations

import json
import pickle
import struct
import zlib

import numpy as np
import pytest

from mlip.data.codec import MAGIC, MAGIC_V1, CodecError, decode_structure, encode_structure
from mlip.data.structure import Structure


@pytest.mark.parametrize("labels", [True, False])
def test_round_trip_is_bit_exact(labels: bool, random_structure, assert_identical) -> None:
    s = random_structure(labels=labels)
    decoded = decode_structure(encode_structure(s))
    assert_identical(s, decoded)
    assert decoded.positions.flags.writeable  # copies, not views into the buffer


def test_round_trip_from_memoryview_and_special_values(random_structure, assert_identical) -> None:
    s = random_structure(n=1)
    s.energy = -0.0
    s.positions[0, 0] = np.nextafter(1.0, 2.0)
    s.forces[0] = [5e-324, -1e308, 1 / 3]
    data = encode_structure(s)
    assert_identical(s, decode_structure(memoryview(data)))


def _tamper(data: bytes, **changes: object) -> bytes:
    n = struct.unpack("<I", data[8:12])[0]
    header = json.loads(data[12 : 12 + n])
    for key, value in changes.items():
        if key.startswith("array_"):
            header["arrays"][key[6:]] = value
        else:
            header[key] = value
    text = json.dumps(header).encode()
    return _with_crc(MAGIC + struct.pack("<I", len(text)) + text + data[12 + n : -4])


def _with_crc(body: bytes) -> bytes:
    """A record with a valid checksum, so the parser (not the checksum) must reject it."""
    return body + struct.pack("<I", zlib.crc32(body))


def _bad_records() -> dict[str, bytes]:
    data = encode_structure(Structure(numbers=[1, 8], positions=np.zeros((2, 3)), energy=1.0))
    return {
        "empty": b"",
        "random": np.random.default_rng(1).bytes(200),
        "pickle": pickle.dumps({"numbers": [1]}),
        "wrong magic": b"XXXXXXXX" + data[8:],
        "truncated header": data[:20],
        "truncated arrays": data[:-8],
        "not json": _with_crc(MAGIC + struct.pack("<I", 4) + b"\xff\xfe{{"),
        "json list": _with_crc(MAGIC + struct.pack("<I", 2) + b"[]"),
        "huge header length": _with_crc(MAGIC + struct.pack("<I", 2**31) + b"{}"),
        "no checksum": data[:-4],
        "truncated by one byte": data[:-1],
        "codec version": _tamper(data, codec=99),
        "object dtype": _tamper(data, array_positions=["|O", [7, 3], 0]),
        "shape mismatch": _tamper(data, array_forces=["<f8", [6, 3], 0]),
        "negative offset": _tamper(data, array_cell=["<f8", [3, 3], -8]),
        "offset past end": _tamper(data, array_cell=["<f8", [3, 3], 10**9]),
        "unknown array": _tamper(data, array_evil=["<f8", [1], 0]),
        "frame not int": _tamper(data, frame="0"),
        "source not str": _tamper(data, source=None),
    }


BAD_RECORDS = _bad_records()


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_rejects_garbage(case: str) -> None:
    with pytest.raises(CodecError):
        decode_structure(BAD_RECORDS[case])


def test_every_flipped_byte_is_detected(random_structure) -> None:
    """The CRC-32 trailer catches a flipped bit at any position."""
    data = encode_structure(random_structure())
    rng = np.random.default_rng(0)
    for pos in range(len(data)):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(CodecError):
            decode_structure(bytes(flipped))


def test_version_1_records_without_checksum_still_read(random_structure, assert_identical) -> None:
    s = random_structure()
    data = encode_structure(s)
    n = struct.unpack("<I", data[8:12])[0]
    header = json.loads(data[12 : 12 + n])
    header["codec"] = 1
    text = json.dumps(header).encode()
    v1 = MAGIC_V1 + struct.pack("<I", len(text)) + text + data[12 + n : -4]
    assert_identical(s, decode_structure(v1))
