"""Sweep YAML -> Ray Tune grid -> the shared trainer -> MLflow -> analysis (docs/design.md §4, §6,
"Tracking").

- ``spec``: the sweep YAML as a validated pydantic model; one-line errors with file:line
  (``trainers.config_errors``)
- ``expand``: grid points -> TrialConfigs (content-addressed ``trial_id``), ``--dry-run`` output
- ``driver``: ``affsweep run`` — plan the trials not done yet, run them with ``tune.Tuner``
- ``trainable``: the Ray Tune function trainable around ``trainers.engine.fit``
- ``callbacks``: the driver-side Tune callback (results table, MLflow summaries, failures)
- ``tracking``: MLflow parent / child / summary runs through ``MlflowClient``; the local server
- ``results``: the sweep directory's record of trials and ``results.parquet``/``results.csv``
- ``status``: ``affsweep status``; ``submit``: the ``ray submit`` entry
"""
