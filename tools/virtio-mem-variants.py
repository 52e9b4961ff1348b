#!/usr/bin/env python3
"""Scenarios with a virtio-mem device in every guest (docs/benchmarks.md, sessions 20 and 27).

    python3 tools/virtio-mem-variants.py out/virtio-mem
    cargo run --release -- bench policies out/virtio-mem/with-balloon/*.toml --out out/vm-b
    cargo run --release -- bench policies out/virtio-mem/without-balloon/*.toml --out out/vm-o

    python3 tools/virtio-mem-variants.py --block 1GiB out/vm-gen out/unseen/scenarios/*.toml

Each `[[vm]]` gets `virtio_mem = { boot = B, block = K }`: K the block size (`--block`,
default 2MiB), B the larger of 512 MiB and a quarter of its memory in whole blocks (left
out where the device above it would not be whole blocks or where B is not below its
memory). In `with-balloon/` the guest keeps its balloon, in `without-balloon/` it has none
(`balloon = false`), so boot memory is its floor. Without SCENARIO arguments: the shipped
scenarios (`scenarios/*.toml`).
"""
import argparse
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


def variant(path, balloon, block):
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
        # The device must be whole blocks: boot memory is what is left below them.
        boot = memory - (memory - boot) // block * block
        if boot < memory:
            device = f'boot = "{boot >> 20}MiB"'
            if block != BLOCK:
                device += f', block = "{block >> 20}MiB"'
            out.append(f"virtio_mem = {{ {device} }}")
            if not balloon:
                out.append("balloon = false")
    # Traces are found relative to the scenario file: point them at the shipped ones.
    traces = (path.parent / "traces").resolve().as_posix()
    return "\n".join(out).replace('trace = "traces/', f'trace = "{traces}/')


def main():
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--block", default="2MiB", help="the devices' block size (default 2MiB)")
    args.add_argument("out", type=pathlib.Path)
    args.add_argument("scenario", nargs="*", type=pathlib.Path)
    a = args.parse_args()
    block = size(a.block)
    if block < BLOCK or block & (block - 1):
        raise SystemExit(f"--block {a.block}: a power of two of at least 2MiB")
    paths = a.scenario or sorted((REPO / "scenarios").glob("*.toml"))
    for name, balloon in (("with-balloon", True), ("without-balloon", False)):
        out = a.out / name
        out.mkdir(parents=True, exist_ok=True)
        for path in paths:
            (out / path.name).write_text(variant(path, balloon, block))
    print(f"wrote {a.out}/with-balloon and {a.out}/without-balloon")


if __name__ == "__main__":
    main()
