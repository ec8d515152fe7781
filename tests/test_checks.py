import math

import numpy as np
import pytest
import torch

from pyro_vae.checks import (
    as_data_tensor, call_for_distribution, check_bool, check_callable, check_choice, check_finite, check_float, check_int,
    check_positive_float, check_positive_int, check_program_args, check_seed, fork_rng, parse_spec,
    resolve_device,
)


def test_int_type_and_range():
    assert check_int(3, "n") == 3 and type(check_int(np.int64(3), "n")) is int
    for bad in (True, 2.0, "2", None, 2.5):
        with pytest.raises(TypeError, match="n must be an integer"):
            check_int(bad, "n")
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        check_positive_int(0, "n")
    with pytest.raises(ValueError, match="non-negative"):
        check_int(-1, "n", minimum=0)
    with pytest.raises(ValueError, match="<= 5"):
        check_int(6, "n", maximum=5)


def test_float_type_finiteness_and_range():
    assert check_float(1, "x") == 1.0 and check_float(torch.tensor(0.5), "x") == 0.5
    for bad in ("0.1", True, None, [1.0]):
        with pytest.raises(TypeError, match="x must be a number"):
            check_float(bad, "x")
    with pytest.raises(ValueError, match="NaN"):
        check_float(math.nan, "x")
    with pytest.raises(ValueError, match="finite"):
        check_float(math.inf, "x")
    assert check_float(math.inf, "x", allow_inf=True) == math.inf
    with pytest.raises(ValueError, match="positive number, got 0"):
        check_positive_float(0.0, "lr")
    with pytest.raises(ValueError, match="<= 1"):
        check_float(1.5, "p", minimum=0, maximum=1)
    assert check_float(0.0, "p", minimum=0) == 0.0


def test_bool_choice_callable():
    assert check_bool(np.bool_(True), "b") is True
    with pytest.raises(TypeError):
        check_bool(1, "b")
    assert check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match="unknown mode 'c'; choose one of 'a', 'b'"):
        check_choice("c", "mode", ("a", "b"))
    with pytest.raises(ValueError):
        check_choice(["a"], "mode", ("a", "b"))  # unhashable is just unknown
    with pytest.raises(TypeError, match="model must be callable"):
        check_callable(3, "model")


def test_program_args():
    assert check_program_args([1, 2], None) == ((1, 2), {})
    kwargs = {"beta": 0.5}
    args, out = check_program_args((), kwargs)
    assert args == () and out is kwargs
    with pytest.raises(TypeError, match="model_args must be a tuple.*got int"):
        check_program_args(3, None)
    with pytest.raises(TypeError, match="model_kwargs must be a dict.*got list"):
        check_program_args((), [1])


def test_call_for_distribution_returns_it_or_says_what_went_wrong():
    d = call_for_distribution(lambda s: torch.distributions.Normal(0.0, s), (2.0,), "calling f", "f must return one")
    assert isinstance(d, torch.distributions.Normal) and float(d.scale) == 2.0
    with pytest.raises(ValueError, match="calling f failed with ZeroDivisionError: division by zero") as info:
        call_for_distribution(lambda: 1 / 0, (), "calling f", "f must return one")
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(TypeError, match="^f must return one, got Tensor$"):
        call_for_distribution(torch.zeros, (2,), "calling f", "f must return one")
    with pytest.raises(ValueError, match="^f must return one, got int$"):
        call_for_distribution(lambda: 3, (), "calling f", "f must return one", error=ValueError)


def test_parse_spec_forms():
    assert parse_spec("Normal", "prior") == ("normal", {})
    assert parse_spec(("mixture", {"k": 2}), "prior") == ("mixture", {"k": 2})
    assert parse_spec({"name": "vamp", "n": 3}, "prior") == ("vamp", {"n": 3})
    assert parse_spec(3.0, "prior") == (None, None)
    with pytest.raises(ValueError, match="'name' key"):
        parse_spec({"n": 3}, "prior")
    with pytest.raises(ValueError, match="pair"):
        parse_spec(("a", "b"), "prior")


def test_finite_names_the_kind_and_row():
    x = torch.ones(4, 3)
    x[2, 1] = math.nan
    with pytest.raises(ValueError, match="NaN \\(first in row 2\\)"):
        check_finite(x, "data")
    x[2, 1] = math.inf
    with pytest.raises(ValueError, match="infinite values"):
        check_finite(x, "data")
    x[3, 0] = -math.inf                      # the sum is NaN, the values infinite
    with pytest.raises(ValueError, match="infinite values \\(first in row 2\\)"):
        check_finite(x, "data")


def test_finite_values_whose_sum_overflows_pass():
    x = torch.full((4, 3), 1e308, dtype=torch.float64)
    assert not torch.isfinite(x.sum())
    assert check_finite(x, "data") is x


def test_as_data_tensor_converts_and_refuses():
    t = as_data_tensor(np.array([[1, 2], [3, 4]]), "data")
    assert t.dtype == torch.get_default_dtype() and t.tolist() == [[1, 2], [3, 4]]
    big_endian = np.array([[1.5, 2.0]], dtype=">f8")
    assert as_data_tensor(big_endian, "data").tolist() == [[1.5, 2.0]]
    assert as_data_tensor(torch.ones(2, 3, dtype=torch.float64), "data", dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="1e\\+300.*too large for torch.float32"):
        as_data_tensor(np.array([[1e300]]), "data", dtype=torch.float32)
    with pytest.raises(ValueError, match="shape \\(N, 3\\)"):
        as_data_tensor(torch.ones(2, 4), "data", features=3)
    with pytest.raises(ValueError, match="flatten images"):
        as_data_tensor(torch.ones(2, 4, 4), "data", dim=2)
    with pytest.raises(ValueError, match="at least one datapoint"):
        as_data_tensor(torch.ones(0, 4), "data")
    with pytest.raises(TypeError, match="numpy array"):
        as_data_tensor([[1.0]], "data")
    with pytest.raises(TypeError, match="dtype object"):
        as_data_tensor(np.array([["a"]], dtype=object), "data")


def test_resolve_device():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(None, default=None) is None
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad, match in (("bogus", "not a device"), ("meta", "cannot run")):
        with pytest.raises(ValueError, match=match):
            resolve_device(bad)
    with pytest.raises(TypeError):
        resolve_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_seed_and_fork_rng_restore_global_state():
    with pytest.raises(TypeError, match="every random path takes a seed"):
        check_seed(None, allow_none=False)
    with pytest.raises(ValueError):
        check_seed(-1)
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    with fork_rng(7):
        inside = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(3))  # seeded inside
    torch.manual_seed(5)
    with fork_rng(7):
        torch.rand(100)
    assert torch.equal(torch.rand(3), expected_next)  # global stream untouched
