"""The registry of training methods: name -> module.

A method module defines ``NAME``, ``add_arguments(parser)`` (its own argument group, titled
"method NAME"), ``check(args)``, ``check_data(args, dataset)`` and ``Trainer(ctx, args)`` (see
:mod:`timm_reid.train.iics`). Adding a method means adding its module and one line here.
"""

from importlib import import_module

METHODS = {
    "iics": "timm_reid.train.iics",
    "ice": "timm_reid.train.ice",
}


def get_method(name):
    if name not in METHODS:
        from timm_reid.train.errors import ConfigError

        raise ConfigError(f"unknown --method {name!r}; valid methods: {', '.join(METHODS)}")
    return import_module(METHODS[name])
