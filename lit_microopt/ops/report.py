"""``python -m lit_microopt kernels``: print what is compiled and what each optimizer will use."""

from __future__ import annotations

from lit_microopt.ops.dispatch import kernels_report


def main(argv: list[str] | None = None) -> int:
    """Print :func:`~lit_microopt.ops.dispatch.kernels_report`; takes no options.

    Example:
        >>> main([])  # doctest: +ELLIPSIS
        lit_microopt extension: ...
        0
    """
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m lit_microopt kernels\n\nPrint the compiled kernels and what each optimizer uses.")
        return 0
    print(kernels_report())
    return 0
