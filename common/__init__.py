"""Shared core of horovod-recipes: one training loop for every framework, and the components it calls.

Layers, lowest first (a module imports only from its own layer or lower ones; docs/development.md, "Layout"):
``base``, ``world``, ``config``, ``data``, ``faults``, ``monitor``, ``frameworks``,
``checkpoint``, ``loop``, ``strategies``, ``launch``. ``loop.trainer`` is the loop; a framework
plugs in through ``frameworks.backend.Backend`` (``torch_backend``, ``tf_backend``;
``loop.keras_fit`` drives the same trainer from ``model.fit``).
"""

from common.base.signals import hold_early

# A worker's stop signal from here on waits for its training loop (common.base.signals), and a
# wrapping hvd-launch knows the worker; recipes import the core before their framework.
hold_early()
