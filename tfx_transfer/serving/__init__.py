"""Serving: the TF-Serving-compatible REST server and its page.

``app`` (``ModelServer``, ``create_app``, ``serve``: ``tfx-transfer serve``) and ``background``
(``start_server``: the same server in a thread of this process) on top of ``protocol``
(requests, JSON codec, responses), ``servable`` (one loaded version), ``versions`` (which
version is served), ``batching`` (micro-batching) and ``page``.

Kept light: importing this package imports none of its modules (TensorFlow stays lazy).
"""
