"""Pickle-free binary encoding of one :class:`~mlip.data.structure.Structure`.

Layout of one record (all integers little-endian)::

    MAGIC (8 bytes) | header length L (uint32) | JSON header (L bytes, UTF-8) | array bytes
    | CRC-32 of everything before it (uint32)

The checksum (version 2; version-1 records, written before it, have none and still read)
turns a flipped or truncated byte anywhere in a record into an error instead of numbers.

The JSON header holds the scalar fields and, per array, its dtype, shape and byte offset
into the array section. Arrays are raw little-endian buffers, so every field round-trips
bit for bit. Decoding parses JSON and copies bytes into numpy arrays with a fixed, whitelisted
dtype per field: untrusted input can never execute code, and malformed input raises
:class:`CodecError`.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import numpy as np

from mlip.data.structure import Structure

MAGIC_V1 = b"MLIPST\x00\x01"  # no checksum
MAGIC = b"MLIPST\x00\x02"  # CRC-32 trailer
CODEC_VERSION = 2
_LEN = struct.Struct("<I")

# field -> (stored dtype, trailing shape; None = the atom count n)
_ARRAYS: dict[str, tuple[str, tuple[int | None, ...]]] = {
    "numbers": ("<i8", (None,)),
    "positions": ("<f8", (None, 3)),
    "cell": ("<f8", (3, 3)),
    "pbc": ("|b1", (3,)),
    "forces": ("<f8", (None, 3)),
    "stress": ("<f8", (3, 3)),
}
_OPTIONAL_ARRAYS = ("forces", "stress")
_SCALARS: dict[str, tuple[type, ...]] = {
    "energy": (float, int, type(None)),
    "charge": (float, int),
    "spin_multiplicity": (float, int),
    "config_type": (str,),
    "source": (str,),
    "frame": (int,),
}


class CodecError(ValueError):
    """Bytes that are not a valid encoded structure."""


def encode_structure(structure: Structure) -> bytes:
    """Serialise a structure to bytes (no pickle).

    Args:
        structure: the record to encode; arrays are converted to the stored dtypes
            (int64 numbers, float64 positions/cell/forces/stress, bool pbc).

    Returns:
        The encoded record, decodable with :func:`decode_structure`.
    """
    header: dict[str, Any] = {"codec": CODEC_VERSION}
    header["energy"] = None if structure.energy is None else float(structure.energy)
    header["charge"] = float(structure.charge)
    header["spin_multiplicity"] = float(structure.spin_multiplicity)
    header["config_type"] = str(structure.config_type)
    header["source"] = str(structure.source)
    header["frame"] = int(structure.frame)
    arrays: dict[str, list[Any]] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, (dtype, _) in _ARRAYS.items():
        value = getattr(structure, name)
        if value is None:
            continue
        data = np.ascontiguousarray(value, dtype=dtype)
        raw = data.tobytes()
        arrays[name] = [dtype, list(data.shape), offset]
        chunks.append(raw)
        offset += len(raw)
    header["arrays"] = arrays
    # allow_nan: a NaN energy must still round-trip (validation is not the codec's job).
    text = json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
    body = b"".join([MAGIC, _LEN.pack(len(text)), text, *chunks])
    return body + _LEN.pack(zlib.crc32(body))


def decode_structure(data: bytes | memoryview) -> Structure:
    """Rebuild a structure from :func:`encode_structure` bytes.

    Args:
        data: an encoded record (bytes or a buffer, e.g. from an LMDB transaction);
            the returned arrays are copies and do not reference ``data``.

    Returns:
        The decoded structure.

    Raises:
        CodecError: the bytes are not an encoded structure (wrong magic, truncated,
            bad header, unexpected dtype or shape).
    """
    view = memoryview(data).cast("B")
    head = len(MAGIC) + _LEN.size
    magic = bytes(view[: len(MAGIC)])
    if len(view) < head or magic not in (MAGIC, MAGIC_V1):
        raise CodecError(
            "not an encoded mlip structure (missing magic bytes); "
            "the record was not written by mlip or is corrupted"
        )
    version = 2 if magic == MAGIC else 1
    if version == 2:
        if len(view) < head + _LEN.size:
            raise CodecError("record truncated: no checksum")
        (stored,) = _LEN.unpack(view[-_LEN.size :])
        view = view[: -_LEN.size]
        if zlib.crc32(view) != stored:
            raise CodecError("record checksum mismatch: the record is corrupted")
    (text_len,) = _LEN.unpack(view[len(MAGIC) : head])
    if head + text_len > len(view):
        raise CodecError(f"record truncated: header says {text_len} bytes, {len(view) - head} left")
    try:
        header = json.loads(bytes(view[head : head + text_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CodecError(f"record header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise CodecError("record header is not a JSON object")
    if header.get("codec") != version:
        raise CodecError(
            f"record codec version {header.get('codec')!r} is not supported "
            f"(this mlip reads version {CODEC_VERSION}); upgrade mlip"
        )
    scalars = _decode_scalars(header)
    arrays = _decode_arrays(header.get("arrays"), view[head + text_len :])
    return Structure(**arrays, **scalars)


def _decode_scalars(header: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, types in _SCALARS.items():
        if name not in header:
            raise CodecError(f"record header lacks field {name!r}")
        value = header[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CodecError(f"record field {name!r} has unexpected type {type(value).__name__}")
        out[name] = value
    return out


def _decode_arrays(spec: Any, payload: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(spec, dict):
        raise CodecError("record header lacks the array table")
    unknown = set(spec) - set(_ARRAYS)
    if unknown:
        raise CodecError(f"record has unknown array(s) {sorted(unknown)}")
    out: dict[str, np.ndarray] = {}
    n_atoms: int | None = None
    for name, (dtype, expected) in _ARRAYS.items():
        if name not in spec:
            if name in _OPTIONAL_ARRAYS:
                continue
            raise CodecError(f"record lacks array {name!r}")
        entry = spec[name]
        if not (isinstance(entry, list) and len(entry) == 3):
            raise CodecError(f"array {name!r}: malformed table entry")
        stored_dtype, shape, offset = entry
        if stored_dtype != dtype:
            raise CodecError(f"array {name!r}: dtype {stored_dtype!r}, expected {dtype!r}")
        if not (
            isinstance(shape, list)
            and len(shape) == len(expected)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise CodecError(f"array {name!r}: bad shape {shape!r}")
        for got, want in zip(shape, expected, strict=True):
            if want is None:
                n_atoms = got if n_atoms is None else n_atoms
                if got != n_atoms:
                    raise CodecError(
                        f"array {name!r}: {got} rows but the record has {n_atoms} atoms"
                    )
            elif got != want:
                raise CodecError(f"array {name!r}: shape {shape}, expected {expected}")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise CodecError(f"array {name!r}: bad offset {offset!r}")
        np_dtype = np.dtype(dtype)
        count = math.prod(shape)
        end = offset + count * np_dtype.itemsize
        if end > len(payload):
            raise CodecError(f"array {name!r}: record truncated ({end} > {len(payload)} bytes)")
        raw = np.frombuffer(payload[offset:end], dtype=np.uint8)
        if np_dtype == np.bool_ and raw.size and raw.max() > 1:
            raise CodecError(f"array {name!r}: boolean bytes other than 0/1")
        out[name] = raw.view(np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="), copy=True)
    return out
