"""GPU interconnect topology: `nvidia-smi topo -m` parsed into a link matrix with NVLink islands flagged.

"8x A100" can be sold as two 4-GPU NVLink islands joined over PCIe or the CPU; an all-reduce
across them runs at a fraction of the in-island bandwidth. The matrix makes that visible before a
migration lands a tensor-parallel job there.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from activities.microsuite.models import Topology

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GPU = re.compile(r"^GPU\d+$")


def parse_topology(text: str) -> Topology:
    """Parse the matrix part of `nvidia-smi topo -m` (GPU rows and columns; NICs and affinities are ignored)."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    header_index = next((i for i, line in enumerate(lines) if re.match(r"^\s+GPU0\b", line)), None)
    if header_index is None:
        raise ValueError("no GPU matrix in the topology text: expected a header line starting with GPU0")
    columns = lines[header_index].split()
    gpu_columns = [i for i, name in enumerate(columns) if _GPU.match(name)]
    gpus: list[str] = []
    links: list[list[str]] = []
    for line in lines[header_index + 1 :]:
        cells = line.split()
        if not cells or not _GPU.match(cells[0]):
            if gpus:
                break
            continue
        gpus.append(cells[0])
        # A row is its name, then one cell per column; CPU affinity cells like "0-55" come after the matrix.
        links.append([cells[1 + i] for i in gpu_columns])
    islands = _islands(links)
    split = len(islands) > 1
    if len(gpus) <= 1:
        detail = "one GPU: no interconnect to judge"
    elif split:
        sizes = " + ".join(str(len(island)) for island in islands)
        detail = f"{len(gpus)} GPUs in {len(islands)} NVLink islands ({sizes}): traffic between them crosses PCIe/CPU"
    else:
        detail = f"{len(gpus)} GPUs, one NVLink island"
    return Topology(gpus=gpus, links=links, islands=islands, split=split, detail=detail)


def _islands(links: list[list[str]]) -> list[list[int]]:
    """Connected components over NV<n> links (a hand-written union-find: no dependency is worth 15 lines)."""
    parent = list(range(len(links)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, row in enumerate(links):
        for j, link in enumerate(row):
            if link.startswith("NV"):
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(links)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def read_topology() -> tuple[Topology | None, str]:
    """Run `nvidia-smi topo -m` here; (None, why) when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None, "nvidia-smi not found: no GPU topology"
    try:
        completed = subprocess.run([binary, "topo", "-m"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"nvidia-smi topo -m failed: {error}"
    if completed.returncode != 0:
        return None, f"nvidia-smi topo -m exited {completed.returncode}: {completed.stderr.strip()[:200]}"
    try:
        return parse_topology(completed.stdout), "nvidia-smi topo -m"
    except ValueError as error:
        return None, f"nvidia-smi topo -m: {error}"
