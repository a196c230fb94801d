import dataclasses
from pathlib import Path

import pytest

from pi_classifier.config import (
    Config,
    dump_config,
    load_config,
    parse_config,
    with_changes,
)
from pi_classifier.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "pi-classifier.yaml"


def test_shipped_default_equals_builtin_defaults():
    assert load_config(SHIPPED) == Config()


def test_shipped_default_lists_every_key():
    text = SHIPPED.read_text()
    for section, value in Config().__dict__.items():
        assert f"{section}:" in text
        if hasattr(value, "__dataclass_fields__"):
            for key in value.__dataclass_fields__:
                assert f"  {key}:" in text, f"{section}.{key} missing"


def test_values_are_read_and_converted():
    config = parse_config(
        "top_k: 5\nthreshold: 1\naliases:\n  Granny Smith: apple\n"
        "camera:\n  source: images\n  device: /photos\n"
        "overlay:\n  text_color: [1, 2, 3]\n"
    )
    assert config.top_k == 5
    assert config.threshold == 1.0 and isinstance(config.threshold, float)
    assert config.aliases == {"Granny Smith": "apple"}
    assert config.camera.source == "images"
    assert config.camera.device == "/photos"
    assert config.overlay.text_color == (1, 2, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("top_kk: 3", "top_kk (line 1): unknown key; did you mean 'top_k'?"),
        ("model: x\ncamera:\n  sorce: v4l2", "camera.sorce (line 3): unknown key; "
         "did you mean 'source'?"),
        ("top_k: 0", "top_k (line 1): must be at least 1, not 0"),
        ("threshold: high", "threshold (line 1): must be a number"),
        ("runtime: fast", "runtime (line 1): must be one of auto, litert"),
        ("overlay:\n  text_color: [1, 2]",
         "overlay.text_color (line 2): must be three"),
        ("overlay:\n  bar_color: [0, 0, 300]", "overlay.bar_color (line 2): must be at "
         "most 255"),
        ("display: framebuffer", "display (line 1): must be a mapping"),
        ("web:\n  enabled: yes please", "web.enabled (line 2): must be true or false"),
        ("- a\n- b", "must be a mapping of keys to values"),
        ("top_k: [", "line 1"),
        ("smoothing:\n  threshold_low: 0.9", "threshold_low must not be above"),
        ("web:\n  enabled: true\n  listen: 0.0.0.0", "web.token must be set"),
    ],
)
def test_bad_values_name_the_key_and_line(text, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "my.yaml")
    message = str(caught.value)
    assert message.startswith("my.yaml")
    assert expected in message
    assert "\n" not in message


def test_empty_file_gives_defaults():
    assert parse_config("") == Config()
    assert parse_config("# only a comment\n") == Config()


def test_safe_load_only(tmp_path):
    with pytest.raises(ConfigError):
        parse_config("model: !!python/object/apply:os.system ['true']")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_dump_round_trips():
    config = parse_config("top_k: 4\naliases: {banana: BANANA}\n")
    assert parse_config(dump_config(config)) == config


def test_web_beyond_loopback_with_waiver_is_allowed():
    config = parse_config("web:\n  enabled: true\n  listen: 0.0.0.0\n"
                          "  allow_without_token: true\n")
    assert config.web.listen == "0.0.0.0"


def test_changes_keep_the_rest_of_the_config():
    edited = parse_config("aliases: {banana: Banane}\ndisplay: {output: null}\n"
                          "web: {max_fps: 4, token: secret}\ncamera: {fps: 15}\n")
    changed = with_changes(edited, {"web": {"port": 9090}, "top_k": 5}, "flags")
    assert changed.web.port == 9090
    assert changed.top_k == 5
    assert changed.web.max_fps == 4.0
    assert changed.web.token == "secret"
    assert dataclasses.replace(changed, top_k=3, web=edited.web) == edited
    assert with_changes(edited, {}, "flags") == edited


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"camera": {"fps": 500}}, "flags: camera.fps: must be at most 240.0, not 500"),
        ({"display": {"output": "hdmi"}}, "flags: display.output: must be one of"),
        ({"smoothing": {"threshold_low": 0.9}}, "flags: smoothing.threshold_low "
                                                "must not be above"),
    ],
)
def test_changes_follow_the_file_rules(changes, message):
    with pytest.raises(ConfigError) as error:
        with_changes(Config(), changes, "flags")
    assert str(error.value).startswith(message)

