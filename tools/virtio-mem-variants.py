#!/usr/bin/env python3
"""The shipped scenarios with a virtio-mem device in every guest (docs/benchmarks.md, session 20).

    python3 tools/virtio-mem-variants.py out/virtio-mem
    cargo run --release -- bench policies out/virtio-mem/with-balloon/*.toml --out out/vm-b
    cargo run --release -- bench policies out/virtio-mem/without-balloon/*.toml --out out/vm-o

Each `[[vm]]` gets `virtio_mem = { boot = B }`, B = the larger of 512 MiB and a quarter of its
memory in whole 2 MiB blocks (left out where that is not below its memory): in
`with-balloon/` the guest keeps its balloon, in `without-balloon/` it has none
(`balloon = false`), so boot memory is its floor.
"""
import pathlib
import re
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parent.parent
UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
BLOCK = 2 << 20


def size(text):
    m = re.fullmatch(r"([0-9.]+)\s*([KMGT]iB)", text)
    if not m:
        raise SystemExit(f"cannot read the size {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def variant(path, balloon):
    text = path.read_text()
    vms = tomllib.loads(text).get("vm", [])
    out, vm = [], -1
    for line in text.split("\n"):
        out.append(line)
        if line.strip() != "[[vm]]":
            continue
        vm += 1
        memory = size(vms[vm]["memory"])
        boot = max(512 << 20, memory // 4) // BLOCK * BLOCK
        if boot < memory:
            out.append(f'virtio_mem = {{ boot = "{boot >> 20}MiB" }}')
            if not balloon:
                out.append("balloon = false")
    # Traces are found relative to the scenario file: point them at the shipped ones.
    traces = (REPO / "scenarios" / "traces").as_posix()
    return "\n".join(out).replace('trace = "traces/', f'trace = "{traces}/')


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    root = pathlib.Path(sys.argv[1])
    for name, balloon in (("with-balloon", True), ("without-balloon", False)):
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted((REPO / "scenarios").glob("*.toml")):
            (out / path.name).write_text(variant(path, balloon))
    print(f"wrote {root}/with-balloon and {root}/without-balloon")


if __name__ == "__main__":
    main()
