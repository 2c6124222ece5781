"""affsweep analysis: matched-seed paired statistics, the study's tables and figures, the report.

Modules (import what you need; this package imports nothing heavy by itself):
``paired`` (exact sign-flip test, Holm, bootstrap CI), ``errors`` (error-structure metrics),
``plan`` (the sweep YAML's ``analysis:`` block), ``results`` (loading), ``pairing`` and
``contrasts`` (matched-seed comparisons), ``hypotheses`` (the declared hypotheses: tested, Holm per
family, decided), ``isolation``, ``study`` (everything computed for a
report), ``tables``, ``figures``, ``report`` (``run_analysis``, ``affsweep analyze``); ``dotted``
(dotted key paths, shared with the orchestrator). A fake sweep for tests and benchmarks is
``tests/support/fake_sweep.py``.
"""
