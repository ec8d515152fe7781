"""Declarable components of a model: what priors (:mod:`pyro_vae.priors`) and likelihoods
(:mod:`pyro_vae.likelihoods`) have in common.

A component is an ``nn.Module`` that describes itself as a JSON-able dict (:meth:`Component.describe`),
so that a run configuration can name it and build it again. A user declares one as

* a name of a built-in, ``"mixture"``;
* a name with keyword arguments, ``("mixture", {"n_components": 5})`` or
  ``{"name": "mixture", "n_components": 5}`` (the form ``describe`` returns);
* an instance, or a callable that the module of its kind wraps in its user class.

:func:`read_declaration` reads the first two forms against a registry of built-ins, and
:func:`build_declared` builds the built-in, so that the two kinds word their errors alike.
"""

import torch
from torch import nn

from pyro_vae.checks import check_registered, parse_spec

__all__ = ["Component", "read_declaration", "build_declared"]


class Component(nn.Module):
    """Base of the priors and likelihoods: a module that describes itself.

    Its ``repr`` lists what :meth:`describe` returns, but for the name (and the ``repr`` of a
    user's function or class).
    """

    #: what the component is, in messages (``"prior"``)
    kind = None
    #: the attribute holding the size it is built for, its constructor's first argument
    #: (``"latent_dim"``)
    size_name = None

    def describe(self):
        """:returns: a JSON-able dict, ``{"name": ..., **hyperparameters}``, that the ``make_``
        function of the component's kind accepts to build the same component (with fresh
        parameters). Components of the user's describe themselves with the name ``"user"``;
        they cannot be rebuilt by name."""
        raise NotImplementedError

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k not in ("name", "repr"))


def read_declaration(spec, base, registry, size, size_owner, example, user_form):
    """Read a component declared by name, as a name with keyword arguments, or as its dict;
    check the size of one given as an instance.

    :param spec: the declaration.
    :param type base: the base class of the kind (:class:`~pyro_vae.priors.Prior`), whose
        :attr:`Component.kind` and :attr:`Component.size_name` word the messages.
    :param dict registry: the built-in components by name (lower case).
    :param int size: the value of the size argument (``base.size_name``) for this model.
    :param str size_owner: where the size comes from, in words with ``{}`` for the value
        (``"the model has latent_dim={}"``), for the message when the declaration names another.
    :param str example: how to declare the component as a function, for the message when
        ``spec`` is a distribution object.
    :param str user_form: the callable a user may give, in words (``"a callable returning a
        distribution"``), for the message when ``spec`` is none of the forms.
    :returns: ``(name, cls, kwargs)``: the built-in's name, class and further keyword arguments
        (the size taken out); ``(None, None, None)`` when ``spec`` is an instance of ``base``
        (whose size has been checked) or another callable, which the caller wraps.
    :raises TypeError: ``spec`` is a distribution object rather than a function returning one,
        or none of the forms.
    :raises ValueError: an unknown name, a malformed pair or dict, or another size.
    """
    kind, size_name = base.kind, base.size_name
    if isinstance(spec, base):
        given = getattr(spec, size_name)
        if given != size:
            raise ValueError(f"the {kind} has {size_name}={given} but " + size_owner.format(size))
        return None, None, None
    if isinstance(spec, torch.distributions.Distribution):
        raise TypeError(f"pass the {kind} as {example}, not as a distribution object")
    name, kwargs = parse_spec(spec, kind)
    if name is None:
        if callable(spec):
            return None, None, None
        raise TypeError(f"{kind} must be a name ({', '.join(map(repr, registry))}), a (name, kwargs) pair or "
                        f"dict, an nn.Module or {user_form}; got {type(spec).__name__}")
    cls = check_registered(name, registry, kind)
    given = kwargs.pop(size_name, size)
    if given != size:
        raise ValueError(f"{kind} {name!r} was declared with {size_name}={given} but "
                         + size_owner.format(size))
    return name, cls, kwargs


def build_declared(cls, size, kwargs, kind, name):
    """``cls(size, **kwargs)``, with a wrong keyword argument reported as the declaration's.

    :param type cls: the built-in's class.
    :param int size: its first argument.
    :param dict kwargs: the declaration's keyword arguments.
    :param str kind: what is built, for messages (``"prior"``).
    :param str name: the name it was declared with.
    :returns: the component.
    :raises ValueError: ``cls`` does not take these arguments.
    """
    try:
        return cls(size, **kwargs)
    except TypeError as e:
        raise ValueError(f"invalid arguments for {kind} {name!r}: {e}") from None
