"""The four stages, in the order data flows through them.

Each stage reads the previous stage's folder under ``<out>/<model>/`` and writes only its
own (``export/``, ``rewrite/``, ``import/``, ``compare/``), atomically; ``convert`` runs
each in a process of its own, so that TensorFlow (export) and torch never share one.
"""

STAGES = ("export", "rewrite", "import", "compare")
