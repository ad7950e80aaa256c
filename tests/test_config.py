"""Settings precedence and validation: defaults < config file < flags."""

from pathlib import Path

import pytest
import yaml

from audioloop.config import _CHOICES, DISTILLED, Settings, load_settings, parse_float_list, read_config
from audioloop.errors import InputError, SettingsError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_lists_exactly_the_builtin_defaults():
    values = read_config(ROOT / "configs" / "default.yaml")
    defaults = Settings()
    assert values, "default.yaml is empty"
    for name, value in values.items():
        assert getattr(defaults, name) == value, name


def test_default_geometry_is_the_design_one():
    s = Settings()
    assert (s.width, s.height, s.fps, s.window, s.overlap) == (832, 480, 25.0, 19.88, 2.0)
    assert s.sigmas == DISTILLED and len(s.sigmas) == 9 and s.sigmas[-1] == 0.0
    assert (s.nag_scale, s.nag_alpha, s.nag_tau, s.adain) == (5.0, 0.25, 2.5, 0.2)


def test_tiny_config_is_small_and_uses_the_tiny_model():
    s = load_settings(ROOT / "configs" / "tiny.yaml")
    assert (s.width, s.height, s.model) == (64, 64, "tiny")
    assert s.window < 2


def test_flags_override_file_which_overrides_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"width": 640, "height": 384, "seed": 7, "per_step_adain": [0.3, 0.1]}))
    s = load_settings(cfg, {"width": 512, "seed": None, "fps": 24})
    assert s.width == 512  # flag beats file
    assert s.height == 384  # file beats default
    assert s.seed == 7  # a flag left at None is "not given"
    assert s.fps == 24.0 and isinstance(s.fps, float)
    assert s.per_step_adain == (0.3, 0.1)
    assert s.overlap == 2.0  # default


def test_hyphenated_keys_are_accepted(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nag-scale: 3\n")
    assert load_settings(cfg).nag_scale == 3.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("widht: 640\n", r"unknown setting 'widht' \(did you mean 'width'\?\)"),
        ("width: wide\n", "width must be a int"),
        ("nag: 1\n", "nag must be true or false"),
        ("crf: 52\n", "crf 52 is out of range; use 0 to 51"),
        ("image_crf: -1\n", "image_crf -1 is out of range; use 0 to 51"),
        ("context: pixels\n", "context must be one of latent, pixel"),
        ("sigmas: [1, a]\n", "sigmas must be a list of numbers"),
        ("- a\n- b\n", "expected a mapping"),
        ("width: [\n", "not valid YAML at line"),
    ],
)
def test_bad_config_files_name_the_file_and_the_key(tmp_path, text, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises((InputError, SettingsError), match=match) as info:
        load_settings(cfg)
    assert str(cfg) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_float_lists_parse_and_reject_garbage():
    assert parse_float_list("0.3, 0.2,0.1,0", "x") == (0.3, 0.2, 0.1, 0.0)
    assert parse_float_list("", "x") == ()
    with pytest.raises(SettingsError, match="--per-step-adain"):
        parse_float_list("0.3;0.2", "--per-step-adain")


def test_flag_values_are_validated_like_file_values():
    with pytest.raises(SettingsError, match="--context: context must be one of"):
        load_settings(None, {"context": "video"})
    assert load_settings(None, {"per_step_adain": "0.3,0.2"}).per_step_adain == (0.3, 0.2)


def test_settings_to_dict_is_json_ready():
    d = Settings().to_dict()
    assert isinstance(d["sigmas"], list) and d["width"] == 832


def test_compile_is_auto_true_or_false_and_attention_names_match_accel(tmp_path):
    from audioloop.models.accel import ATTENTION

    assert _CHOICES["attention"] == tuple(ATTENTION)
    assert Settings().compile == "auto"
    for value, expected in (("auto", "auto"), (True, True), (False, False), ("false", False)):
        assert load_settings(None, {"compile": value}).compile == expected
    path = tmp_path / "c.yaml"
    path.write_text("compile: maybe\n")
    with pytest.raises(SettingsError, match="compile must be auto, true or false"):
        load_settings(path)


def test_background_decode_is_auto_true_or_false(tmp_path):
    assert Settings().background_decode == "auto"
    for value, expected in (("auto", "auto"), (True, True), ("False", False)):
        assert load_settings(None, {"background_decode": value}).background_decode == expected
    path = tmp_path / "c.yaml"
    path.write_text("background_decode: 2\n")
    with pytest.raises(SettingsError, match="background_decode must be auto, true or false"):
        load_settings(path)
