"""Turns a .cu file into C++ that g++ compiles against cuda_emulation.h, changing only what C++ cannot say.

- ``kernel<Args><<<grid, block, shared, stream>>>(arguments)`` becomes
  ``::cuda_emulation::launch(&kernel<Args>, grid, block, shared, stream)(arguments)``;
- ``__shared__ T name[N];`` becomes a reference into the block's shared memory:
  ``static char name_site; auto& name = ::cuda_emulation::shared_variable<T[N]>(&name_site);``.

Everything else is compiled as written (with ``#line`` markers, so that g++'s messages name the .cu file's lines).

Usage: ``python rewrite.py input.cu output.cpp``
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_LAUNCH = re.compile(r"(?P<kernel>[A-Za-z_]\w*(?:\s*<[^<>;()]*>)?)\s*<<<(?P<config>.*?)>>>", re.DOTALL)
_SHARED = re.compile(r"__shared__\s+(?P<type>[^;=]*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\]\s*)*);")
_EXTERN_SHARED = re.compile(r"extern\s+__shared__")


def _shared(match: re.Match) -> str:
    type_name = f"{match['type']}{match['dims'].replace(' ', '')}"
    name = match["name"]
    return (f"static char {name}_site; auto& {name} = "
            f"::cuda_emulation::shared_variable<{type_name}>(&{name}_site);")


def rewrite(source: str, path: str) -> str:
    """The emulation's version of ``source`` (the text of the .cu file at ``path``)."""
    if _EXTERN_SHARED.search(source):
        raise ValueError(f"{path}: dynamic shared memory (extern __shared__) is not emulated")
    # Both rewrites keep the number of lines: diagnostics and debuggers point at the .cu file's own lines.
    text = _LAUNCH.sub(lambda m: f"::cuda_emulation::launch(&{m['kernel']}, {m['config']})", source)
    text = _SHARED.sub(_shared, text)
    if "<<<" in text or "__shared__" in text:
        raise ValueError(f"{path}: a launch or a __shared__ declaration that rewrite.py does not understand")
    return f'#line 1 "{path}"\n{text}'


def main(arguments: list[str]) -> None:
    source, target = Path(arguments[0]), Path(arguments[1])
    target.write_text(rewrite(source.read_text(), str(source.resolve())))


if __name__ == "__main__":
    main(sys.argv[1:])
