"""The built-in methods of the paper protocol, one module per method family.

* `tfembsize.protocol.methods.baselines`: ``full``, ``es``, ``mr``, ``frequency``;
* `tfembsize.protocol.methods.bet`: ``bet``, ``bet-random``, ``bet-sizes-only``;
* `tfembsize.protocol.methods.pep`: ``pep``;
* `tfembsize.protocol.methods.ciess`: ``ciess``, ``ciess-no-walk``;
* `tfembsize.protocol.methods.esapn`: ``esapn``, ``esapn-cap``.

Each module registers its methods with `tfembsize.protocol.register_method` when imported;
the registry imports them on its first lookup (`tfembsize.protocol.registry.BUILTIN_MODULES`).
This package imports none of them itself. A new method family adds one module here and its
name to that list.
"""
