import pytest
import torch

from pyro_vae.components import Component, build_declared, read_declaration


class Scale(Component):
    """A component of a made-up kind, built as Scale(size, factor=...)."""

    kind = "scale"
    size_name = "width"

    def __init__(self, width, factor=1.0):
        super().__init__()
        self.width = width
        self.factor = factor

    def describe(self):
        return {"name": "scale", "width": self.width, "factor": self.factor}


REGISTRY = {"scale": Scale}


def _read(spec, size=3):
    return read_declaration(spec, Scale, REGISTRY, size, "the model has width={}", "a function, e.g. f",
                            "a callable returning a scale")


def test_a_declaration_by_name_pair_or_dict_gives_the_class_and_its_arguments():
    assert _read("Scale") == ("scale", Scale, {})
    assert _read(("scale", {"factor": 2.0})) == ("scale", Scale, {"factor": 2.0})
    # the form describe() returns, with the size taken out
    assert _read(Scale(3, 2.0).describe()) == ("scale", Scale, {"factor": 2.0})
    built = build_declared(Scale, 3, {"factor": 2.0}, "scale", "scale")
    assert (built.width, built.factor) == (3, 2.0)


def test_instances_and_callables_are_left_to_the_caller_after_their_size_is_checked():
    assert _read(Scale(3)) == (None, None, None)
    assert _read(lambda: None) == (None, None, None)
    with pytest.raises(ValueError, match=r"^the scale has width=4 but the model has width=3$"):
        _read(Scale(4))


def test_a_wrong_declaration_says_what_to_give_instead():
    with pytest.raises(ValueError, match=r"^scale 'scale' was declared with width=5 but the model has width=3$"):
        _read({"name": "scale", "width": 5})
    with pytest.raises(ValueError, match=r"unknown scale 'shape'; valid names: 'scale'"):
        _read("shape")
    with pytest.raises(TypeError, match=r"^pass the scale as a function, e.g. f, not as a distribution object$"):
        _read(torch.distributions.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match=r"^scale must be a name \('scale'\), a \(name, kwargs\) pair or dict, an "
                                        r"nn.Module or a callable returning a scale; got int$"):
        _read(7)
    with pytest.raises(ValueError, match=r"^invalid arguments for scale 'scale': .*'colour'"):
        build_declared(Scale, 3, {"colour": 1}, "scale", "scale")


def test_the_repr_lists_the_description_but_the_name():
    assert repr(Scale(3, 2.0)) == "Scale(width=3, factor=2.0)"
