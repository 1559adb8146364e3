"""``python -m enlace``: the same as the ``enlace`` command."""

from enlace.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
