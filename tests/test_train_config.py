"""Configuration: presets, dotted overrides, strict keys and types, the saved resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest

from alexnet.errors import UserError
from alexnet.locations import preset_files
from alexnet.train.config import Config, key_table, load_config, parse_override_value, parse_overrides, to_toml
from train_support import TINY, tiny_kwargs_arg

PRESETS = ("fashion-mnist", "cifar10", "cifar10-ablations", "imagewoof", "paper-imagenet")


def test_defaults_are_the_papers_recipe():
    """Section 5 of the paper, number by number."""
    c = Config()
    assert (c.train.batch_size, c.optim.momentum, c.optim.weight_decay, c.optim.lr) == (128, 0.9, 0.0005, 0.01)
    assert (c.schedule.kind, c.schedule.factor, c.schedule.max_drops) == ("plateau", 0.1, 3)
    assert (c.train.epochs, c.data.size, c.data.crop, c.data.flip, c.data.pca_std) == (90, 256, 224, True, 0.1)
    assert c.data.mean == "image" and c.model.name == "alexnet"


def test_precision_and_memory_format_default_to_auto():
    """The one departure from the paper's float32 in the defaults: "auto" (alexnet.fastpath) picks
    bfloat16 where it is native. Explicit values stay what they say, and round-trip through TOML."""
    c = Config()
    assert (c.train.precision, c.train.channels_last) == ("auto", "auto")
    c = load_config("fashion-mnist", ["--train.precision", "fp32", "--train.channels_last", "false"])
    assert (c.train.precision, c.train.channels_last) == ("fp32", False)
    assert 'precision = "fp32"' in to_toml(c) and "channels_last = false" in to_toml(c)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_round_trips(preset, tmp_path):
    c = load_config(preset)
    assert c.preset == preset and preset_files()[preset].is_file()
    saved = tmp_path / "config.toml"
    saved.write_text(to_toml(c))
    assert load_config(saved).to_dict() == c.to_dict()


def test_paper_preset_is_unchanged_paper_recipe():
    c, d = load_config("paper-imagenet"), Config()
    for section in ("optim", "schedule"):
        assert getattr(c, section) == getattr(d, section)
    assert (c.train.epochs, c.train.batch_size, c.train.test_views) == (90, 128, "ten")
    assert c.model.name == "alexnet" and c.model.kwargs.get("init", "paper") == "paper"


def test_val_every_is_refused_where_the_schedule_needs_every_validation():
    assert load_config("cifar10", ["--train.val_every", "0"]).train.val_every == 0      # one-cycle: fine
    with pytest.raises(UserError, match="val_every"):
        load_config("paper-imagenet", ["--train.val_every", "2"])                       # plateau: refused
    with pytest.raises(UserError, match="val_every"):
        load_config("cifar10", ["--train.val_every", "-1"])


def test_dotted_overrides_are_typed():
    c = load_config("cifar10", ["--optim.lr", "0.02", "--train.epochs=3", "--data.flip", "false",
                                "--model.kwargs.lrn", "false", "--train.precision", "bf16"])
    assert c.optim.lr == 0.02 and c.train.epochs == 3 and c.data.flip is False
    assert c.model.kwargs == {"lrn": False} and c.train.precision == "bf16"
    assert load_config("cifar10", ["--optim.lr", "1"]).optim.lr == 1.0       # int widens to float
    # model.kwargs merge: one switch does not wipe the preset's others
    assert load_config("fashion-mnist", ["--model.kwargs.dropout", "0.0"]).model.kwargs["hidden"] == 512


@pytest.mark.parametrize("args, fragments", [
    (["--optim.lrr", "0.1"], ["optim.lrr", "unknown"]),
    (["--optimizer.lr", "0.1"], ["optimizer", "unknown"]),
    (["--train.epochs", "ten"], ["train.epochs", "'ten'", "integer"]),
    (["--train.epochs", "2.5"], ["train.epochs", "2.5", "integer"]),
    (["--data.flip", "3"], ["data.flip", "3", "true or false"]),
    (["--train.precision", "fp8"], ["train.precision", "fp8", "auto, fp32, bf16, fp16"]),
    (["--train.channels_last", "yes"], ["train.channels_last", "yes", "true, false, auto"]),
    (["--train.channels_last", "1"], ["train.channels_last", "1", "true, false, auto"]),
    (["--lr", "0.1"], ["--lr", "dotted"]),
    (["--optim.lr"], ["--optim.lr", "missing value"]),
    (["0.1"], ["'0.1'", "--section.key"]),
    (["--data.crop", "300"], ["data.crop", "300", "256"]),
])
def test_bad_settings_are_one_line_user_errors(args, fragments):
    with pytest.raises(UserError) as err:
        load_config("paper-imagenet", args)
    assert all(f in str(err.value) for f in fragments), str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[optim]\nmomentun = 0.9\n")
    with pytest.raises(UserError, match=r"typo.toml: unknown key 'optim.momentun'"):
        load_config(typo)
    with pytest.raises(UserError, match="no such config file or preset"):
        load_config("imagenet-22k")


def test_parse_overrides_nests():
    assert parse_overrides(["--a.b.c", "[1, 2]", "--a.d=x y"]) == {"a": {"b": {"c": [1, 2]}, "d": "x y"}}


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    assert load_config("fashion-mnist").cache_dir() == tmp_path / "fashion-mnist-28"
    assert load_config("fashion-mnist", ["--data.cache", "/x/y"]).cache_dir().as_posix() == "/x/y"


def test_tiny_kwargs_is_valid_toml():
    assert parse_override_value(tiny_kwargs_arg()) == TINY


def test_the_docs_table_of_settings_is_the_schema():
    """docs/training.md lists every setting as declared: type, default, range, meaning. When this fails,
    paste the table printed below between the markers."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    begin = text.index("<!-- settings:")
    begin = text.index("\n", begin) + 1
    table = text[begin:text.index("<!-- end of settings -->")]
    assert table == key_table(), "docs/training.md's table of settings is stale; it should read:\n" + key_table()
    assert "| `optim.lr` | a number | `0.01` | a finite number >= 0 |" in table


def test_an_existing_cache_sets_the_size_and_bounds_the_crop(tmp_path):
    """A cache given as data.cache is read at its own size; a crop larger than it is refused, naming
    the cache; a data.size that contradicts it is refused."""
    import json
    cache = tmp_path / "pics-64"
    cache.mkdir()
    (cache / "meta.json").write_text(json.dumps({"size": 64, "complete": True}))
    c = load_config("fashion-mnist", ["--data.cache", str(cache)])
    assert (c.data.size, c.data.crop) == (64, 28) and c.label() == "pics-64"
    with pytest.raises(UserError) as err:
        load_config("paper-imagenet", ["--data.cache", str(cache)])           # crop 224 of 64 px images
    assert "data.crop" in str(err.value) and str(cache) in str(err.value) and "64" in str(err.value)
    with pytest.raises(UserError, match="data.size"):
        load_config("fashion-mnist", ["--data.cache", str(cache), "--data.size", "28"])


def test_a_run_is_named_after_its_data():
    assert load_config("fashion-mnist").label() == "fashion-mnist"
    assert load_config("cifar10", ["--data.source", "/x/my_photos/"]).label() == "my_photos"
    assert load_config("cifar10", ["--data.name", "dogs"]).label() == "dogs"


def test_suspicious_settings_warn_once(capsys, monkeypatch):
    from alexnet import options
    monkeypatch.setattr(options, "_WARNED", set())
    load_config("fashion-mnist", ["--optim.lr", "0"])
    load_config("fashion-mnist", ["--optim.lr", "0"])
    assert capsys.readouterr().err.count("optim.lr = 0") == 1
    load_config("fashion-mnist", ["--train.batch_size", "16"])
    err = capsys.readouterr().err
    assert "train.batch_size 16" in err and "128" in err and "--optim.lr 0.00625" in err
    load_config("fashion-mnist", ["--train.batch_size", "32"])               # within 4x: fine
    load_config("fashion-mnist", ["--train.batch_size", "16", "--optim.lr", "0.01"])   # the user chose the lr
    assert capsys.readouterr().err == ""
