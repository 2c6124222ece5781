"""Where the MLflow UI opens on a sweep: one URL that lands on the runs table with the summary runs and
their headline ``<metric>/mean`` and ``/std`` columns, without a click.

What MLflow 3's UI does (read in its bundle, 3.17.2, and checked in headless Chromium by
``tests/test_ui_chromium.py``):

- it opens every experiment in its GenAI view unless the URL says ``workflowType=machine_learning``
  (that query wins over the browser's remembered ``mlflow.workflowType``, whose default is GenAI);
- the runs table shows only the Source, Models and Dataset columns by default: metric columns must
  be selected;
- a *shared view* selects them: the experiment tag ``mlflow.sharedViewState.<key>`` holds the page's
  state as JSON (``selectedColumns``, ``columnOrder``, ``columnWidths``, ``searchFilter`` ...), and
  ``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens it. The ``/runs`` path is needed:
  ``#/experiments/<id>`` redirects there and drops the share key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote

from orchestrator.tracking import SWEEP

UI_BASE = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
HEADLINE = ("p_mtl", "va_ccc", "expr_f1", "au_f1", "error_severity")  # a summary metric absent: no column
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def view_key(sweep: str) -> str:
    return "affsweep-" + re.sub(r"[^\w.-]", "_", sweep)


def view_state(sweep: str, axes: Iterable[str]) -> dict:
    """Run name, the headline means and stds, then the condition's axes (tags of the summary runs);
    only this sweep's runs."""
    metrics = [f"metrics.`{m}/{s}`" for m in HEADLINE for s in ("mean", "std")]
    tags = [f"tags.`{a}`" for a in axes]
    name = "attributes.`Run Name`"
    flt = sweep.replace("'", "\\'")
    return {"selectedColumns": [*metrics, *tags], "columnOrder": [name, *metrics, *tags],
            "columnWidths": {name: 300}, "searchFilter": f"tags.`{SWEEP}` = '{flt}'"}


def save_view(client, experiment_id: str, sweep: str, axes: Iterable[str]) -> str:
    """Write the sweep's shared view on the experiment; its key."""
    key = view_key(sweep)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(view_state(sweep, axes)))
    return key


def landing_url(base: str, experiment_id: str, key: str | None = None) -> str:
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return url + (f"&viewStateShareKey={quote(key)}" if key else "")
