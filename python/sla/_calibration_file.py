"""The calibration file (docs/BLOCK_MAP.md, "Calibration"): JSON, format ``sla-calibration`` version 1.

``Calibration`` is what sla.calibrate returns and what the file holds: per layer the chosen BlockRule and the
statistics it was chosen from, and the settings of the run. Every value is checked when a Calibration is made or
loaded (rules against the library's ranges, the block sizes and block counts against its limits, numbers finite),
so that a bad file is refused when it is read, naming the file and the field, and not at a model's first forward.
Saving serialises the whole file first and then replaces the old one atomically (sla.atomic): a value JSON cannot
hold is an error that leaves the old file untouched.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, Union

from . import _options, atomic
from .rules import BlockRule

FORMAT = "sla-calibration"
VERSION = 1


def _plain(value: object, where: str) -> object:
    """`value` as plain JSON values (numpy and 0-d torch scalars become Python numbers); raises naming `where` for
    anything JSON cannot hold exactly (NaN, infinities, other objects)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number (JSON has no NaN or Inf), got {value}")
        return float(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: expected string keys, got {k!r} ({type(k).__name__})")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if callable(getattr(value, "item", None)) and tuple(getattr(value, "shape", (None,))) == ():
        return _plain(value.item(), where)  # numpy scalar, 0-d array or tensor
    raise TypeError(
        f"{where}: expected a JSON value (number, string, bool, None, list or dict), got {type(value).__name__}"
    )


def _check_int(where: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: expected an int >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{where}: expected an int >= {low}, got {value}")


def _check_settings(settings: dict) -> None:
    """The settings sla.calibrate writes, where present (a hand-made file may leave them out)."""
    for name in ("block_q", "block_k"):
        if name in settings:
            _options.check_block_size(f"settings[{name!r}]", settings[name])
    if "min_blocks" in settings:
        _check_int("settings['min_blocks']", settings["min_blocks"], 1)
    if settings.get("max_blocks") is not None:
        _check_int("settings['max_blocks']", settings["max_blocks"], settings.get("min_blocks", 1))
    if "rows_per_head" in settings:
        _check_int("settings['rows_per_head']", settings["rows_per_head"], 1)
    choices = {"target": ("mass", "error"), "rule": ("topk", "top_p", "auto")}
    for name, allowed in choices.items():
        if name in settings:
            _options.check_choice(f"settings[{name!r}]", settings[name], allowed)
    if "quality" in settings:
        q = _options.check_number("settings['quality']", settings["quality"], "> 0")
        if not (0.0 < q < math.inf):
            raise ValueError(f"settings['quality']: expected a finite value > 0, got {q}")
    if settings.get("budget") is not None:
        b = _options.check_number("settings['budget']", settings["budget"], "in (0, 1]")
        if not (0.0 < b <= 1.0):
            raise ValueError(f"settings['budget']: expected an average density in (0, 1], got {b}")


def _check_layer(name: str, entry: object) -> BlockRule:
    where = f"layers[{name!r}]"
    if not isinstance(entry, dict):
        raise TypeError(f"{where}: expected a dict with a 'rule', got {type(entry).__name__}")
    if "rule" not in entry:
        raise ValueError(f"{where}: expected a 'rule' entry, got keys {sorted(entry)}")
    try:
        rule = BlockRule.from_dict(entry["rule"])
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}['rule']: {exc}") from exc
    shape = entry.get("shape")
    if shape is not None:
        if not isinstance(shape, dict):
            raise TypeError(f"{where}['shape']: expected a dict, got {type(shape).__name__}")
        if "heads" in shape:
            _check_int(f"{where}['shape']['heads']", shape["heads"], 1)
            if rule.heads is not None and rule.heads != shape["heads"]:
                raise ValueError(
                    f"{where}['rule']: expected H = {shape['heads']} per-head values (the layer's "
                    f"shape['heads']), got {rule.heads}"
                )
    return rule


@dataclass
class Calibration:
    """The result of sla.calibrate: per layer a BlockRule and the statistics it was chosen from.

    layers: layer name -> {"rule": BlockRule.to_dict(), and optionally "family", "shape", "heads",
        "mean_density"}; settings: the calibration's settings (sla.calibrate's arguments and results).
    Checked when made (and again when saved): a bad value raises naming the field."""

    layers: Dict[str, dict]
    settings: dict

    def __post_init__(self):
        self.check()

    def check(self) -> dict:
        """Checks every field, as the file will hold it, and returns the file's content as plain JSON values."""
        if not isinstance(self.layers, dict):
            raise TypeError(f"layers: expected a dict layer name -> entry, got {type(self.layers).__name__}")
        if not isinstance(self.settings, dict):
            raise TypeError(f"settings: expected a dict, got {type(self.settings).__name__}")
        d = _plain(
            {"format": FORMAT, "version": VERSION, "settings": self.settings, "layers": self.layers}, "calibration"
        )
        for name, entry in d["layers"].items():
            _check_layer(name, entry)
        _check_settings(d["settings"])
        return d

    def rules(self) -> Dict[str, BlockRule]:
        return {name: BlockRule.from_dict(entry["rule"]) for name, entry in self.layers.items()}

    def to_json(self) -> dict:
        """The file's content as plain JSON values (numpy scalars converted; NaN, Inf and other objects refused)."""
        return self.check()

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the file atomically: serialised whole first, then a temporary file renamed onto `path`; a call
        that raises leaves an existing file as it was."""
        path = atomic.check_output_path("path", path)
        text = json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n"
        atomic.write_text(path, text)

    @classmethod
    def from_json(cls, d: object) -> "Calibration":
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object with format {FORMAT!r}, got a JSON {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise ValueError(f"format: expected {FORMAT!r}, got {d.get('format')!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"version: expected {VERSION}, got {d.get('version')!r}")
        if "layers" not in d:
            raise ValueError("layers: missing (expected a dict layer name -> entry)")
        return cls(d["layers"], d.get("settings", {}))

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Calibration":
        """Reads a calibration file; every error names the file."""
        path = os.fspath(path)
        where = f"calibration file {path!r}"
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no such file") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"{where}: is a folder, expected a JSON file") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None

        def refuse_constant(name: str):
            raise ValueError(f"{name} is not a JSON number")

        try:
            d = json.loads(text, parse_constant=refuse_constant)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: not valid JSON: {exc}") from None
        try:
            return cls.from_json(d)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc


def load_rules(path: Union[str, os.PathLike]) -> Dict[str, BlockRule]:
    """Layer name -> BlockRule from a calibration file (every value checked; errors name the file)."""
    return Calibration.load(path).rules()


__all__ = ["FORMAT", "VERSION", "Calibration", "load_rules"]
