import pytest
import torch

import shapetrace
from shapetrace._core.walker import Attr, Index, Key, format_path, parse_path, replace, resolve


class Holder:
    pass


def _lin():
    return torch.nn.Linear(2, 2)


def test_paths_print_and_parse_back():
    path = (Attr("body_estimation"), Attr("model"))
    assert format_path(path) == "body_estimation.model"
    for text in ("body_estimation.model", "nets[0]", "models['x']", "a.b[3]['k'].c"):
        assert format_path(parse_path(text)) == text


def test_finds_attributes_lists_dicts_and_stops_at_first_module():
    h = Holder()
    h.unet = torch.nn.Sequential(_lin(), _lin())
    h.nets = [_lin()]
    h.models = {"x": _lin()}
    h.inner = Holder()
    h.inner.model = _lin()
    found = shapetrace.find_modules(h)
    assert set(found) == {"unet", "nets[0]", "models['x']", "inner.model"}
    assert found["unet"] is h.unet  # children of unet are not listed separately


def test_shortest_path_then_alphabetical_wins_and_each_module_once():
    h = Holder()
    m = _lin()
    h.z = m
    h.a = Holder()
    h.a.deep = m
    h.b = m
    found = shapetrace.find_modules(h)
    assert list(found) == ["b"]


def test_survives_cycles_and_does_not_trigger_properties():
    calls = []

    class Lazy:
        def __init__(self):
            self.me = self
            self.model = _lin()

        @property
        def expensive(self):
            calls.append(1)
            return _lin()

    lazy = Lazy()
    assert set(shapetrace.find_modules(lazy)) == {"model"}
    assert calls == []


def test_include_exclude_globs_and_errors_name_what_exists():
    h = Holder()
    h.text_encoder, h.text_encoder_2, h.unet = _lin(), _lin(), _lin()
    assert set(shapetrace.find_modules(h, include=["text_encoder*"])) == {"text_encoder", "text_encoder_2"}
    assert set(shapetrace.find_modules(h, exclude="text_*")) == {"unet"}
    with pytest.raises(shapetrace.ModuleNotFoundInObject, match=r"'vea' matched no module; modules found: .*unet"):
        shapetrace.find_modules(h, include=["vea"])
    with pytest.raises(shapetrace.ModuleNotFoundInObject, match="exclude pattern 'nope'"):
        shapetrace.find_modules(h, exclude=["nope"])


def test_replace_bypasses_setattr_and_resolves():
    class Guarded:
        def __init__(self):
            self.__dict__["model"] = _lin()

        def __setattr__(self, name, value):
            raise AssertionError("__setattr__ must not run")

    g = Guarded()
    new = _lin()
    old = replace(g, parse_path("model"), new)
    assert g.model is new and old is not new
    assert resolve(g, (Attr("model"),))[2] is new
    d = {"x": [old]}
    replace(d, (Key("x"), Index(0)), new)
    assert d["x"][0] is new


def test_a_module_itself_is_refused_with_a_hint():
    with pytest.raises(shapetrace.ModuleNotFoundInObject, match="pass the object that holds it"):
        shapetrace.find_modules(_lin())
