"""Label rules of a conversion: explicit label keys must match, and every frame of a file
carries the labels its first frame has (unless missing labels are allowed)."""

from __future__ import annotations

from typing import Any

from mlip.data.structure import InvalidStructureError, Structure

LABELS = ("energy", "forces", "stress")


class LabelKeyError(ValueError):
    """An explicitly named label key (``--energy-key`` ...) matches nothing in a file."""


def _available_keys(atoms: Any) -> str:
    info = sorted(str(k) for k in atoms.info)
    arrays = sorted(str(k) for k in atoms.arrays if k not in ("numbers", "positions"))
    results = sorted(getattr(atoms.calc, "results", None) or {}) if atoms.calc is not None else []
    return (
        f"info keys {info or 'none'}, arrays keys {arrays or 'none'}, "
        f"calculator results {results or 'none'}"
    )


class LabelCheck:
    """Per input file: explicit label keys must match, and (unless allowed) every frame has
    the labels the file's first frame has (for stress: its first periodic frame; molecules
    have no stress). Energy-only files (held-out scans) are fine without keys."""

    def __init__(self, path: str, keys: dict[str, str | None], allow_missing: bool) -> None:
        self.path, self.keys, self.allow_missing = path, keys, allow_missing
        self.first: dict[str, tuple[int, bool]] = {}  # label -> (frame, present there)
        self.found = dict.fromkeys(LABELS, 0)
        self.available = ""

    def see(self, structure: Structure, atoms: Any) -> None:
        if not self.available:
            self.available = _available_keys(atoms)
        for name in LABELS:
            if name == "stress" and not structure.periodic:
                continue
            have = getattr(structure, name) is not None
            if name not in self.first:
                self.first[name] = (structure.frame, have)
                key = self.keys[name]
                if key is not None and not have and not self.allow_missing:
                    raise LabelKeyError(
                        f"{self.path}, frame {structure.frame}: --{name}-key / data.{name}_key "
                        f"{key!r} is not in the frame; it has {_available_keys(atoms)}"
                    )
            self._compare(name, structure.frame, have)
            self.found[name] += have

    def _compare(self, name: str, frame: int, have: bool) -> None:
        ref_frame, ref_have = self.first[name]
        if have != ref_have and not self.allow_missing:
            them = "one" if name == "energy" else "them"
            now, then = ("has", "has none") if have else ("has no", f"has {them}")
            raise InvalidStructureError(
                f"{self.path}, frame {frame}: {now} {name}, frame {ref_frame} of the file "
                f"{then}; mixed labels need --allow-missing-labels (data.allow_missing_labels; "
                "missing labels are masked in training)"
            )

    def absorb(self, other: LabelCheck) -> None:
        """Continue with the next unit of the same file (frames after this one's)."""
        if not self.available:
            self.available = other.available
        for name, (frame, have) in other.first.items():
            if name not in self.first:
                self.first[name] = (frame, have)
                continue
            self._compare(name, frame, have)
        for name, count in other.found.items():
            self.found[name] += count

    def finish(self) -> None:
        for name, key in self.keys.items():
            if key is not None and self.available and self.found[name] == 0:
                raise LabelKeyError(
                    f"{self.path}: --{name}-key / data.{name}_key {key!r} matches no frame; "
                    f"frame 0 has {self.available}"
                )
