"""The YAML configuration: built-in defaults, loading and validation."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from pi_classifier.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/pi-classifier/config.yaml")
CONFIG_ENV = "PI_CLASSIFIER_CONFIG"

RGB = tuple[int, int, int]
#: How errors name values that came from command-line options.
COMMAND_LINE = "command-line options"


def _option(default: Any, **rules: Any) -> Any:
    """Declare a config field with its default and its validation rules."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class CameraConfig:
    """Where frames come from."""

    source: str = _option(
        "auto",
        choices=("auto", "picamera2", "v4l2", "video", "images", "test-pattern"),
    )
    device: str | None = _option(None)
    width: int = _option(640, min=16, max=7680)
    height: int = _option(480, min=16, max=4320)
    fps: float = _option(30.0, min=0.1, max=240.0)
    slide_seconds: float = _option(3.0, min=0.1, max=3600.0)
    lores_format: str = _option("auto", choices=("auto", "yuv420", "rgb"))
    frame_timeout: float = _option(2.0, min=0.1, max=60.0)


@dataclass(frozen=True)
class DisplayConfig:
    """Where the annotated picture goes."""

    output: str = _option(
        "auto", choices=("auto", "framebuffer", "drm", "window", "null")
    )
    device: str = _option("/dev/fb0")
    fallback: str = _option("framebuffer", choices=("framebuffer", "none"))
    hide_cursor: bool = _option(True)


@dataclass(frozen=True)
class OverlayConfig:
    """How the labels and figures are drawn over the picture."""

    position: str = _option(
        "top-left", choices=("top-left", "top-right", "bottom-left", "bottom-right")
    )
    font_scale: float = _option(1.0, min=0.1, max=10.0)
    panel_color: RGB = _option((0, 0, 0), min=0, max=255)
    panel_opacity: float = _option(0.6, min=0.0, max=1.0)
    text_color: RGB = _option((255, 255, 255), min=0, max=255)
    bar_color: RGB = _option((60, 200, 90), min=0, max=255)
    show: list[str] = _option(
        ["labels", "fps", "inference", "temperature"],
        items=("labels", "fps", "inference", "latency", "temperature"),
    )


@dataclass(frozen=True)
class SmoothingConfig:
    """How scores are steadied over time before they are shown."""

    alpha: float = _option(0.3, min=0.01, max=1.0)
    threshold_high: float = _option(0.5, min=0.0, max=1.0)
    threshold_low: float = _option(0.3, min=0.0, max=1.0)


@dataclass(frozen=True)
class WebConfig:
    """The built-in web view."""

    enabled: bool = _option(False)
    listen: str = _option("127.0.0.1")
    port: int = _option(8080, min=1, max=65535)
    token: str | None = _option(None)
    allow_without_token: bool = _option(False)
    max_fps: float = _option(10.0, min=0.1, max=60.0)
    jpeg_quality: int = _option(80, min=10, max=100)
    max_clients: int = _option(32, min=1, max=1000)


@dataclass(frozen=True)
class Config:
    """The whole effective configuration of pi-classifier."""

    model: str = _option("mobilenet_v2_1.0_224_quant")
    labels: str | None = _option(None)
    runtime: str = _option(
        "auto", choices=("auto", "litert", "tflite-runtime", "tensorflow")
    )
    threads: int = _option(0, min=0, max=64)
    delegate: str = _option("none", choices=("none", "edgetpu"))
    top_k: int = _option(3, min=1, max=100)
    threshold: float = _option(0.1, min=0.0, max=1.0)
    crop: str = _option("center", choices=("center", "none"))
    aliases: dict[str, str] = _option({})
    camera: CameraConfig = field(default_factory=CameraConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    web: WebConfig = field(default_factory=WebConfig)


def _fail(path: str, node: yaml.Node | None, message: str) -> ConfigError:
    """Build the error for one bad key, naming its path and line."""
    where = f" (line {node.start_mark.line + 1})" if node is not None else ""
    return ConfigError(f"{path}{where}: {message}")


def _type_name(hint: Any) -> str:
    """Name a type hint the way a YAML user thinks of it."""
    names = {str: "a string", int: "a whole number", float: "a number",
             bool: "true or false"}
    origin = get_origin(hint)
    if origin is dict:
        return "a mapping of names to names"
    if origin in (list, tuple):
        return "a list"
    args = [a for a in get_args(hint) if a is not type(None)]
    if args:
        return names.get(args[0], "a value") + " or null"
    return names.get(hint, "a value")


def _convert_scalar(value: Any, hint: Any, path: str, node: yaml.Node) -> Any:
    """Check a scalar against its type hint and return it in that type."""
    args = get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(
        value, bool
    ):
        return float(value)
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(
        value, bool
    ):
        return str(value)
    raise _fail(path, node, f"must be {_type_name(hint)}, not {value!r}")


def _check_rules(value: Any, rules: dict[str, Any], path: str, node: Any) -> None:
    """Check a converted value against the field's choices and range."""
    if "choices" in rules and value not in rules["choices"]:
        raise _fail(path, node, f"must be one of {', '.join(rules['choices'])}, "
                    f"not {value!r}")
    if value is None or isinstance(value, str):
        return
    low, high = rules.get("min"), rules.get("max")
    if low is not None and value < low:
        raise _fail(path, node, f"must be at least {low}, not {value}")
    if high is not None and value > high:
        raise _fail(path, node, f"must be at most {high}, not {value}")


def _convert_sequence(
    value: Any, hint: Any, rules: dict[str, Any], path: str, node: yaml.Node
) -> Any:
    """Check a list field: an RGB triple or a list of allowed words."""
    if not isinstance(value, list):
        raise _fail(path, node, f"must be {_type_name(hint)}, not {value!r}")
    items = node.value if isinstance(node, yaml.SequenceNode) else [node] * len(value)
    if get_origin(hint) is tuple:
        if len(value) != 3:
            raise _fail(path, node, "must be three numbers: [red, green, blue]")
        pairs = zip(value, items, strict=True)
        converted = [_convert_scalar(v, int, path, n) for v, n in pairs]
        for item, item_node in zip(converted, items, strict=True):
            _check_rules(item, rules, path, item_node)
        return tuple(converted)
    pairs = zip(value, items, strict=True)
    converted = [_convert_scalar(v, str, path, n) for v, n in pairs]
    allowed = rules.get("items")
    for item, item_node in zip(converted, items, strict=True):
        if allowed and item not in allowed:
            raise _fail(path, item_node, f"{item!r} is not one of {', '.join(allowed)}")
    return converted


def _convert_mapping(value: Any, path: str, node: yaml.Node) -> dict[str, str]:
    """Check a mapping of names to names, such as label aliases."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, node, f"must be a mapping of names to names, not {value!r}")
    pairs = node.value if isinstance(node, yaml.MappingNode) else []
    marks = {str(k.value): v for k, v in pairs}
    result = {}
    for key, item in value.items():
        result[str(key)] = _convert_scalar(item, str, f"{path}.{key}",
                                           marks.get(str(key), node))
    return result


def _convert_field(
    value: Any, hint: Any, rules: dict[str, Any], path: str, node: yaml.Node
) -> Any:
    """Check one field's value against its type hint and rules."""
    origin = get_origin(hint)
    if value is None and "null" in rules.get("choices", ()):
        value = "null"  # "output: null" names the null display, not no value
    if origin is dict:
        return _convert_mapping(value, path, node)
    if origin in (list, tuple):
        return _convert_sequence(value, hint, rules, path, node)
    converted = _convert_scalar(value, hint, path, node)
    _check_rules(converted, rules, path, node)
    return converted


def _build(cls: type, data: Any, node: yaml.Node | None, prefix: str) -> Any:
    """Build a config dataclass from parsed YAML, checking every key."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        name = prefix.rstrip(".") or "the file"
        raise _fail(name, node, "must be a mapping of keys to values")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    marks = _key_nodes(node)
    values = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        key_node, value_node = marks.get(str(key), (None, None))
        if key not in fields:
            raise _fail(path, key_node, _unknown_key_message(str(key), fields))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, value_node, f"{path}.")
        else:
            values[key] = _convert_field(value, hint, dict(fields[key].metadata),
                                         path, value_node)
    return cls(**values)


def _key_nodes(node: yaml.Node | None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """Map each key of a YAML mapping node to its key and value nodes."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): (key, value) for key, value in node.value}


def _unknown_key_message(key: str, fields: dict[str, Any]) -> str:
    """Say that a key is unknown, suggesting the closest known one."""
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (known keys: {', '.join(fields)})"


def _check_consistency(config: Config) -> None:
    """Check rules that tie several keys together."""
    smoothing = config.smoothing
    if smoothing.threshold_low > smoothing.threshold_high:
        raise ConfigError(
            "smoothing.threshold_low must not be above smoothing.threshold_high "
            f"({smoothing.threshold_low} > {smoothing.threshold_high})"
        )
    web = config.web
    loopback = web.listen in ("127.0.0.1", "localhost", "::1")
    if web.enabled and not loopback and not web.token and not web.allow_without_token:
        raise ConfigError(
            f"web.listen is {web.listen!r}, beyond this machine, so web.token must "
            "be set (or web.allow_without_token: true to waive it)"
        )


def _checked_config(data: Any, node: yaml.Node | None, source: str) -> Config:
    """Build a Config from plain data by every rule, naming ``source`` on error."""
    try:
        config = _build(Config, data, node, "")
        _check_consistency(config)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return config


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text into a Config.

    Args:
        text: The YAML document.
        source: Where the text came from, for error messages.

    Returns:
        The validated configuration, defaults filled in.

    Raises:
        ConfigError: The text is not valid YAML or breaks a rule.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(f"{source}:{where} {problem}") from error
    return _checked_config(data, node, source)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load and validate the configuration file.

    Args:
        path: The file to read; None reads the default file when it exists
            and otherwise uses the built-in defaults.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The file cannot be read or is invalid.
    """
    if path is None:
        path = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
        if not Path(path).exists():
            log.info("no config file at %s; using built-in defaults", path)
            return Config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    return parse_config(text, str(path))


def with_changes(config: Config, changes: dict[str, Any], source: str) -> Config:
    """Return ``config`` with some keys changed, checked by the file's rules.

    Command-line options go through here, so they can no more break a range
    or open the web view without a token than the file can.

    Args:
        config: A validated configuration.
        changes: New values by key; a section's changes are a mapping of
            some of its keys.
        source: Where the changes come from, for error messages.

    Returns:
        The changed configuration.

    Raises:
        ConfigError: A new value, or the changed whole, breaks a rule.
    """
    data = config_to_dict(config)
    for key, value in changes.items():
        if dataclasses.is_dataclass(getattr(config, key, None)):
            data[key].update(value)
        else:
            data[key] = value
    return _checked_config(data, None, source)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Turn a Config (or section) into plain data for printing."""
    data = dataclasses.asdict(config)
    return _plain(data)


def _plain(value: Any) -> Any:
    """Turn tuples into lists so YAML and JSON print them plainly."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def dump_config(config: Config) -> str:
    """Render the effective configuration as YAML."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
