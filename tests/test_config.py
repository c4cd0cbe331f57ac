import pytest
import yaml

from pipeline.config import CONFIG_DIR, load_config, save_config
from pipeline.core.errors import UserError

# SPEC 2, Table 5: backbone, head, image size, batch, epochs
TABLE5 = {
    "m1": ("eca_nfnet_l2", "arcface", 512, 4, 20),
    "m2": ("efficientnet_b3", "arcface", 512, 8, 20),
    "m3": ("eca_nfnet_l2", "cosface", 512, 4, 20),
    "m4": ("vit_small_patch16_384", "arcface", 384, 16, 20),
    "m5": ("vit_small_patch16_384", "arcface", 384, 16, 50),
    "m6": ("regnety_120", "arcface", 224, 8, 60),
    "m7": ("resnest101e", "arcface", 256, 8, 60),
}


@pytest.mark.parametrize("name", sorted(TABLE5))
def test_model_configs_match_spec(name):
    cfg = load_config(name)
    assert (cfg["backbone"], cfg["head"], cfg["image_size"], cfg["batch_size"], cfg["epochs"]) == TABLE5[name]
    assert cfg["embedding_dim"] == 4096
    assert (cfg["optimizer"], cfg["lr"], cfg["momentum"], cfg["weight_decay"]) == ("sgd", 0.001, 0.9, 0.0005)
    assert (cfg["scheduler"], cfg["min_lr"]) == ("cosine", 0.0)
    assert (cfg["arcface"], cfg["cosface"]) == ({"s": 30.0, "m": 0.2}, {"s": 64.0, "m": 0.35})


def test_model_files_hold_only_differences():
    default = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    for path in CONFIG_DIR.glob("*.yaml"):
        if path.stem == "default":
            continue
        data = yaml.safe_load(path.read_text())
        assert set(data) <= set(default), path
        assert len(path.read_text().splitlines()) <= 15, path
        assert any(data[k] != default[k] for k in data), path


def test_every_default_key_has_a_comment():
    for line in (CONFIG_DIR / "default.yaml").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, line


def test_overrides_types_and_nesting():
    cfg = load_config("m1", ["epochs=2", "arcface.m=0.3", "lr=1e-2", "pretrained=false", "mean=[0.5,0.5,0.5]"],
                      fold=3, data=None)
    assert cfg["epochs"] == 2 and cfg["arcface"]["m"] == 0.3 and cfg["lr"] == 0.01
    assert cfg["pretrained"] is False and cfg["mean"] == [0.5, 0.5, 0.5] and cfg["fold"] == 3
    assert cfg["data"] == "data/demo"  # None from a flag means "not given"


@pytest.mark.parametrize("override,needle", [
    ("epoch=2", "unknown config key 'epoch'"),
    ("epochs=two", "'epochs' must be int"),
    ("pretrained=maybe", "'pretrained' must be bool"),
    ("arcface.q=1", "unknown config key 'arcface.q'"),
    ("arcface=1", "'arcface' is a section"),
    ("lr", "key=value"),
])
def test_bad_overrides(override, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        load_config("m1", [override])


def test_unknown_config_name():
    with pytest.raises(UserError, match="unknown config 'm99'"):
        load_config("m99")


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config("m3", ["epochs=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg


def _numeric_keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numeric_keys(v, f"{prefix}{k}.")
        elif (isinstance(v, (int, float)) and not isinstance(v, bool)) or v == "auto":
            yield f"{prefix}{k}", v


def test_every_numeric_key_has_a_range_holding_its_default():
    from pipeline.config import RANGES

    keys = dict(_numeric_keys(yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())))
    autos = {"layout", "device", "amp_dtype", "channels_last"}  # 'auto' keys whose values are words or bools
    assert set(RANGES) == set(keys) - autos
    assert all(RANGES[k].holds(v) for k, v in keys.items() if k in RANGES and v != "auto")


@pytest.mark.parametrize("key", sorted(__import__("pipeline.config", fromlist=["RANGES"]).RANGES))
def test_a_value_outside_a_keys_range_is_one_line_naming_it(key):
    from pipeline.config import RANGES

    r = RANGES[key]
    outside = [v for v in (None if r.low is None else r.low - 1, r.above, None if r.high is None else r.high + 1,
                           r.below) if v is not None]
    inside = r.low if r.low is not None else (r.above + 1 if r.below is None else (r.above + r.below) / 2)
    default = dict(_numeric_keys(yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())))[key]
    for value in outside + ([".nan", ".inf"] if isinstance(default, float) else []):  # an int key refuses floats
        with pytest.raises(UserError) as e:
            load_config("default", [f"{key}={value}"])
        assert f"{key}=" in str(e.value) and f"must be {r}" in str(e.value) and "\n" not in str(e.value)
    load_config("default", [f"{key}={inside}"])
