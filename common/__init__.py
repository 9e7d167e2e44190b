"""Shared core of horovod-recipes: one training loop for every framework, and the components it calls.

Layers, lowest first (a module imports only from its own layer or lower ones; docs/development.md, "Layout"):
``base``, ``world``, ``config``, ``data``, ``faults``, ``monitor``, ``frameworks``,
``checkpoint``, ``loop``, ``strategies``, ``launch``. ``loop.trainer`` is the loop; a framework
plugs in through ``frameworks.backend.Backend`` (``torch_backend``, ``tf_backend``;
``loop.keras_fit`` drives the same trainer from ``model.fit``).
"""
