"""``python -m staging --config FILE [--no-workers]``: the staging role alone
(what ``fedgate serve-staging`` runs)."""

from __future__ import annotations

import argparse
import logging
import sys

from fedgate.config import ConfigError, load_config
from staging.app import run_staging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m staging")
    p.add_argument("--config", required=True)
    p.add_argument("--no-workers", action="store_true")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"fedgate: {exc}", file=sys.stderr)
        return 2
    run_staging(config, workers=not args.no_workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
