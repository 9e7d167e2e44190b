"""Shared core of horovod-recipes: one training loop for every framework, and the components it calls.

``trainer`` is the loop; ``checkpoint`` (save policy, restore/save protocol, files), ``metrics``,
``schedule``, ``output``, ``config`` and ``elastic`` are its framework-agnostic components; a
framework plugs in through ``backend.Backend`` (``torch_backend``, ``tf_backend``; ``keras_fit``
drives the same trainer from ``model.fit``).
"""
