"""Input checks shared by every public entry point of the package.

One convention everywhere: a value of the wrong *type* raises :class:`TypeError`, a value of the
right type but out of range raises :class:`ValueError`; both say what was wrong and what to do.
The command line turns either into a one-line message and exit code 2.

* numbers: :func:`check_int`, :func:`check_positive_int`, :func:`check_float`,
  :func:`check_positive_float`, :func:`check_bool`, :func:`check_choice`;
* programs and named components: :func:`check_callable`, :func:`check_program_args`,
  :func:`parse_spec`, :func:`call_for_distribution`;
* data: :func:`check_finite`, :func:`as_data_tensor`;
* where and how randomly: :func:`resolve_device`, :func:`check_seed`, :func:`fork_rng`.
"""

import contextlib
import math
import numbers

import numpy as np
import torch

__all__ = [
    "check_int",
    "check_positive_int",
    "check_float",
    "check_positive_float",
    "check_bool",
    "check_choice",
    "check_registered",
    "check_callable",
    "check_program_args",
    "call_for_distribution",
    "parse_spec",
    "check_finite",
    "as_data_tensor",
    "resolve_device",
    "check_seed",
    "fork_rng",
]


# --------------------------------------------------------------------------- numbers
def _type_name(value):
    return type(value).__name__


def check_int(value, name, minimum=None, maximum=None):
    """An integer in ``[minimum, maximum]``.

    ``bool`` is refused, as is a float with an integral value (``2.0``): a count given as a
    float is usually a mistake upstream. numpy integers are accepted.

    :param value: the value to check.
    :param str name: what it is called at the boundary (an argument or option name).
    :param int minimum: smallest allowed value (default: no bound).
    :param int maximum: largest allowed value (default: no bound).
    :returns: the value as a Python ``int``.
    :raises TypeError: not an integer.
    :raises ValueError: out of range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({_type_name(value)})")
    value = int(value)
    if minimum is not None and value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {what}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value}")
    return value


def check_positive_int(value, name):
    """An integer >= 1 (see :func:`check_int`)."""
    return check_int(value, name, minimum=1)


def check_float(value, name, minimum=None, maximum=None, *, strict_minimum=False,
                allow_inf=False):
    """A real number, finite unless ``allow_inf``, within the given bounds.

    Strings are refused (``"0.1"`` is a :class:`TypeError`): parse them where they are read.

    :param value: the value to check (int, float, numpy scalar or 0-d tensor).
    :param str name: what it is called at the boundary.
    :param float minimum: lower bound (default: none).
    :param float maximum: upper bound, inclusive (default: none).
    :param bool strict_minimum: the value must be greater than ``minimum``, not equal.
    :param bool allow_inf: accept +-inf (NaN is always refused).
    :returns: the value as a Python ``float``.
    :raises TypeError: not a real number.
    :raises ValueError: NaN, infinite, or out of range.
    """
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({_type_name(value)})")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got NaN")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict_minimum and not value > minimum:
            what = "a positive number" if minimum == 0 else f"a number > {minimum:g}"
            raise ValueError(f"{name} must be {what}, got {value:g}")
        if not value >= minimum:
            what = "a non-negative number" if minimum == 0 else f"a number >= {minimum:g}"
            raise ValueError(f"{name} must be {what}, got {value:g}")
    if maximum is not None and not value <= maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value:g}")
    return value


def check_positive_float(value, name, maximum=None):
    """A finite number > 0 (see :func:`check_float`)."""
    return check_float(value, name, minimum=0.0, maximum=maximum, strict_minimum=True)


def check_bool(value, name):
    """``True`` or ``False`` (numpy bools too); anything else is a :class:`TypeError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({_type_name(value)})")
    return bool(value)


def check_choice(value, name, choices):
    """One of ``choices`` (compared with ``==``).

    :returns: the value.
    :raises ValueError: not among the choices; the message lists them.
    """
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable or incomparable
        ok = False
    if not ok:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(repr(c) for c in choices)}")
    return value


def check_registered(name, registry, kind):
    """The entry ``registry[name]`` of a registry of built-in components (priors, likelihoods).

    :param str name: the name given.
    :param dict registry: built-in components by name.
    :param str kind: what the registry holds, for the message (``"prior"``).
    :returns: the registered entry.
    :raises ValueError: the name is ``"user"`` (a user's component is passed itself, not by
        name) or not registered; the message lists the valid names.
    """
    if name == "user":
        raise ValueError(f"a user-declared {kind} cannot be rebuilt from its name; pass the "
                         "function or module itself")
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(map(repr, registry))}")
    return registry[name]


# --------------------------------------------------------------------------- programs
def check_callable(fn, name):
    """A callable (a Pyro program, a function, a module)."""
    if not callable(fn):
        raise TypeError(f"{name} must be callable (a Pyro program), got {_type_name(fn)}")
    return fn


def check_program_args(model_args, model_kwargs):
    """The further arguments of a Pyro model and guide, ``program(x, *args, **kwargs)``.

    :param model_args: a tuple (or list) of positional arguments.
    :param model_kwargs: a dict of keyword arguments, or ``None`` for none.
    :returns: ``(tuple, dict)``.
    :raises TypeError: not a tuple/list, or not a dict.
    """
    if not isinstance(model_args, (tuple, list)):
        raise TypeError(f"model_args must be a tuple of extra positional arguments, got "
                        f"{_type_name(model_args)}")
    if model_kwargs is None:
        model_kwargs = {}
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of keyword arguments, got {_type_name(model_kwargs)}")
    return tuple(model_args), model_kwargs


def call_for_distribution(fn, args, call, returns, error=TypeError):
    """Call a component (a prior, a likelihood, a guide) once, as a check, and return the
    distribution it gives.

    :param callable fn: the component.
    :param tuple args: what it is called with.
    :param str call: the call in words, for the message when it raises (``"calling the prior"``:
        the message reads ``"calling the prior failed with ZeroDivisionError: ..."``).
    :param str returns: what it must return, for the message when it returns something else
        (``"prior must return a Pyro distribution"``: the message adds ``", got Tensor"``).
    :param type error: the exception raised for a result that is not a distribution (the
        components of :mod:`pyro_vae.priors` and :mod:`pyro_vae.likelihoods` raise
        :class:`ValueError`, as they always have).
    :returns: the :class:`torch.distributions.Distribution`.
    :raises ValueError: the call raised (the original exception is chained).
    """
    try:
        result = fn(*args)
    except Exception as e:
        raise ValueError(f"{call} failed with {type(e).__name__}: {e}") from e
    if not isinstance(result, torch.distributions.Distribution):
        raise error(f"{returns}, got {_type_name(result)}")
    return result


def parse_spec(spec, what):
    """A component given by name: ``"name"``, ``("name", {kwargs})`` or ``{"name": ..., **kwargs}``.

    :param spec: the specification.
    :param str what: what it specifies (``"prior"``, ``"likelihood"``...), for messages.
    :returns: ``(name, kwargs)`` with the name lower-cased, or ``(None, None)`` when ``spec`` is
        none of these forms (an object the caller handles itself).
    :raises ValueError: a dict without a ``"name"`` key, or a malformed pair.
    """
    if isinstance(spec, str):
        return spec.lower(), {}
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ValueError(f"a {what} given as a dict needs a 'name' key, got keys {sorted(spec)}")
        return str(spec["name"]).lower(), {k: v for k, v in spec.items() if k != "name"}
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], dict):
            raise ValueError(f"a {what} given as a pair must be (name, kwargs-dict), got {spec!r}")
        return spec[0].lower(), dict(spec[1])
    return None, None


# --------------------------------------------------------------------------- data
def check_finite(x, name):
    """Refuse NaN or infinite values in a tensor, saying which and where.

    :param torch.Tensor x: data, datapoints along dim 0.
    :param str name: what it is called at the boundary.
    :returns: ``x``.
    :raises ValueError: NaN or +-inf present (the message gives the first row).
    """
    # a finite sum proves every value finite (NaN and +-inf propagate) in one cheap pass; the
    # elementwise test runs only when the sum is not finite (a bad value, or an overflow)
    if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x.detach().sum())):
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = ~finite
            nan = torch.isnan(x)
            kind = "NaN" if bool(nan.any()) else "infinite values"
            first = bad.reshape(bad.shape[0], -1).any(1).nonzero()[0, 0].item() if x.dim() else 0
            raise ValueError(f"{name} contains {kind} (first in row {first}); drop or impute them first")
    return x


def as_data_tensor(data, name, *, dim=None, features=None, dtype=None, device=None):
    """Datapoints along dim 0 as a floating-point tensor, checked.

    Accepts a tensor or a numpy array (of numbers or bools). Integer and bool data become
    ``dtype`` (default: torch's default float type); floating data become ``dtype`` when given
    and keep their type otherwise. Values too large for ``dtype`` (``1e300`` in float32) are
    refused by name rather than turned into infinities.

    :param data: ``torch.Tensor`` or ``numpy.ndarray``, shape ``(N, ...)``.
    :param str name: what it is called at the boundary.
    :param int dim: required number of dimensions (e.g. 2 for ``(N, D)``); default any >= 1.
    :param int features: required size of dim 1 (with ``dim=2``); default any.
    :param torch.dtype dtype: floating-point type of the result.
    :param device: device of the result (default: where the data are; CPU for numpy).
    :returns: :class:`torch.Tensor`, shape ``(N, ...)``, with ``N >= 1``, all finite.
    """
    if isinstance(data, np.ndarray):
        if data.dtype == object or not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
            raise TypeError(f"{name} must hold numbers, got a numpy array of dtype {data.dtype}")
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        data = torch.from_numpy(np.ascontiguousarray(data))
    elif not isinstance(data, torch.Tensor):
        shape = f"(N, {features})" if features is not None else "(N, ...)"
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape {shape}, got "
                        f"{_type_name(data)}; see pyro_vae.data.load_data")
    if data.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {data.dtype}")
    if dim is not None and data.dim() != dim:
        want = "(N, D)" if dim == 2 else f"{dim} dimensions"
        hint = " (flatten images first)" if dim == 2 and data.dim() > 2 else ""
        raise ValueError(f"{name} must have shape {want}{hint}; got {tuple(data.shape)}")
    if data.dim() == 0 or data.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one datapoint along dim 0; got shape {tuple(data.shape)}")
    if features is not None and (data.dim() < 2 or data.shape[1] != features):
        raise ValueError(f"{name} must have shape (N, {features}) (flatten images first); got "
                         f"{tuple(data.shape)}")
    check_finite(data, name)
    if dtype is None:
        dtype = data.dtype if data.is_floating_point() else torch.get_default_dtype()
    if data.is_floating_point() and dtype != data.dtype:
        limit = torch.finfo(dtype).max
        if torch.finfo(data.dtype).max > limit and bool((data.abs() > limit).any()):
            big = float(data.abs().max())
            raise ValueError(f"{name} holds values up to {big:.3g} in magnitude, too large for {dtype} "
                             f"(largest {limit:.3g}); rescale the data first")
    return data.to(device=device if device is not None else data.device, dtype=dtype)


# --------------------------------------------------------------------------- devices and seeds
def resolve_device(device, default="cpu"):
    """A device argument as a :class:`torch.device` this machine has.

    :param device: ``None`` (``default``), ``"auto"`` (CUDA when present, else CPU), a device
        string (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or a :class:`torch.device`.
    :param default: what ``None`` means; ``None`` here returns ``None``.
    :returns: :class:`torch.device` (or ``None``).
    :raises ValueError: not a device, a device type the package does not compute on, or CUDA
        asked for where there is none.
    """
    if device is None:
        if default is None:
            return None
        device = default
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'auto', got {_type_name(device)}")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {str(device)!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} cannot run the computation; use 'cpu', 'cuda', "
                         "'cuda:N' or 'auto'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available; use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def check_seed(seed, name="seed", allow_none=True):
    """A seed: a non-negative integer (or ``None`` where the global RNG may be used)."""
    if seed is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a non-negative integer, got None; every random path "
                        "takes a seed, e.g. 0")
    return check_int(seed, name, minimum=0)


@contextlib.contextmanager
def fork_rng(seed, device=None):
    """Run the block with torch's global RNG seeded by ``seed``, then restore its state.

    With ``seed=None`` the block uses (and advances) the global RNG as it is. The CPU generator
    is always forked; the CUDA generator of ``device`` too when it is a CUDA device.

    :param int seed: the seed, or ``None``.
    :param device: the device the block draws on (default CPU).
    """
    if seed is None:
        yield
        return
    seed = check_seed(seed)
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        # seed only the generators that are restored afterwards
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
