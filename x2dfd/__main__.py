"""``python -m x2dfd`` (and ``accelerate launch -m x2dfd ...``) runs the CLI."""

from x2dfd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
