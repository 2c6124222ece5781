"""``affsweep train TRIAL.yaml``: one trial, no Ray, with a progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.preflight import check_trial
from trainers.config import ConfigError, load_trial_config


def main(args) -> int:
    try:
        cfg = load_trial_config(args.config)
        check_trial(cfg, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from trainers.engine import fit

    out = Path(args.out) if args.out else Path("runs") / "trials" / cfg.trial_id
    try:
        result = fit(cfg, out, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = result.metrics
    print(f"trial {cfg.trial_id}: P_MTL {m['p_mtl']:.3f}  VA CCC {m['va_ccc']:.3f}  EXPR F1 {m['expr_f1']:.3f}  "
          f"AU F1 {m['au_f1']:.3f}  ({m['train_seconds']:.1f}s, {m['images_per_second']:.0f} img/s)")
    print(f"trial directory: {out.resolve()}")
    return 0
