"""Ratios, the issue's targets, the machine's description, and the .md / .json results files."""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

Row = Dict[str, Any]


@dataclass(frozen=True)
class Target:
    """A ratio a row must reach: ``value(row) op bound`` for every row ``applies(row)`` selects."""

    text: str
    applies: Callable[[Row], bool]
    value: Callable[[Row], Optional[float]]
    op: str
    bound: float

    def passed(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound


def _peer(name: str) -> Callable[[Row], Optional[float]]:
    return lambda row: (row["peers"].get(name) or {}).get("ratio")


def _is(method: str, backend: Optional[str] = None, device: Optional[str] = None) -> Callable[[Row], bool]:
    def applies(row: Row) -> bool:
        return (row["method"] == method and (backend is None or row["backend"] == backend)
                and (device is None or row["device"].startswith(device)))
    return applies


_CAM_VARIANTS = ("gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "ablationcam")

TARGETS: List[Target] = [
    Target("Grad-CAM <= 1.10x its forward+backward floor", _is("gradcam", "torch"), lambda r: r["floor_ratio"], "<=", 1.10),
    Target("Grad-CAM >= 2x the throughput of pytorch-grad-cam", _is("gradcam", "torch"), _peer("pytorch-grad-cam"), ">=", 2.0),
    Target("Grad-CAM not slower than Captum", _is("gradcam", "torch"), _peer("captum"), ">=", 1.0),
    Target("Grad-CAM over 10 layers <= 1.3x Grad-CAM over one layer (the shallowest of the ten)",
           _is("gradcam (10 layers)", "torch"), lambda r: r.get("vs_one_layer"), "<=", 1.3),
    Target("Guided backprop <= 1.15x the forward+backward-to-input floor", _is("guided_backprop", "torch"),
           lambda r: r["floor_ratio"], "<=", 1.15),
    Target("Occlusion on ONNX Runtime (CPU) >= 2x Captum Occlusion", _is("occlusion", "onnx", "cpu"), _peer("captum"), ">=", 2.0),
    Target("Occlusion on ONNX Runtime (CPU) <= 1.10x its forward floor", _is("occlusion", "onnx", "cpu"),
           lambda r: r["floor_ratio"], "<=", 1.10),
    Target("Score-CAM >= 1.5x torchcam", _is("scorecam"), _peer("torchcam"), ">=", 1.5),
    Target("Grad-CAM on ONNX Runtime (CPU) >= 1.0x the torch backend's throughput", _is("gradcam", "onnx", "cpu"),
           lambda r: r.get("vs_torch"), ">=", 1.0),
    Target("Saliency on ONNX Runtime (CPU) >= 1.0x the torch backend's throughput", _is("saliency", "onnx", "cpu"),
           lambda r: r.get("vs_torch"), ">=", 1.0),
    Target("A CAM variant >= 1.5x pytorch-grad-cam", lambda r: r["method"] in _CAM_VARIANTS and r["backend"] == "torch",
           _peer("pytorch-grad-cam"), ">=", 1.5),
    Target("Integrated Gradients / Input x Gradient >= 1.0x Captum", lambda r: r["method"] in
           ("integrated_gradients", "input_x_gradient") and r["backend"] == "torch", _peer("captum"), ">=", 1.0),
    Target("Integrated Gradients <= 1.10x its floor (steps forward+backward passes)",
           _is("integrated_gradients", "torch"), lambda r: r["floor_ratio"], "<=", 1.10),
    Target("LRP (EpsilonPlusFlat) >= 1.5x zennit", _is("lrp", "torch"), _peer("zennit"), ">=", 1.5),
    Target("DeepLIFT >= 1.5x Captum", _is("deeplift", "torch"), _peer("captum"), ">=", 1.5),
    Target("LRP on ONNX Runtime (CPU) <= 1.5x guided backprop's time on the same ONNX model", _is("lrp", "onnx", "cpu"),
           lambda r: r.get("vs_guided_backprop"), "<=", 1.5),
    Target("DeepLIFT on ONNX Runtime (CPU) <= 1.5x guided backprop's time on the same ONNX model",
           _is("deeplift", "onnx", "cpu"), lambda r: r.get("vs_guided_backprop"), "<=", 1.5),
    Target("On a GPU: the NumPy share of the time under 10%", lambda r: r["device"].startswith("cuda"),
           lambda r: r.get("numpy_share"), "<=", 0.10),
]


def check_targets(rows: List[Row]) -> List[Dict[str, Any]]:
    """One entry per (target, row it applies to) with the measured value and whether it passed."""
    checks = []
    for target in TARGETS:
        for row in rows:
            if not target.applies(row):
                continue
            value = target.value(row)
            checks.append(dict(target=target.text, workload=row["workload"], backend=row["backend"],
                               device=row["device"], method=row["method"], value=value,
                               passed=None if value is None else target.passed(value)))
    return checks


# ---------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(versions: Dict[str, Optional[str]]) -> Dict[str, Any]:
    """CPU, cores, GPU, and the versions of everything measured."""
    import torch

    info: Dict[str, Any] = dict(cpu=_cpu_model(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                                python=platform.python_version(), platform=platform.platform())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    info["versions"] = {k: v for k, v in versions.items() if v is not None}
    return info


def machine_name(info: Dict[str, Any]) -> str:
    """A file name for the results: the GPU's name when there is one, else the CPU's cores."""
    if "gpu" in info:
        return re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    return f"cpu-{info['cores']}core"


# ---------------------------------------------------------------- writing


def _fmt(value: Optional[float], digits: int = 2, suffix: str = "x") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def table(rows: List[Row], peers: List[str]) -> str:
    """The Markdown table: throughput, cnnlens over its floor, and each peer's time over cnnlens's."""
    head = (["model", "backend", "device", "method", "images/s", "x floor", "NumPy share", "torch / onnx"]
            + [f"{p} / cnnlens" for p in peers])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["workload"], r["backend"], r["device"], r["method"], f"{r['images_per_s']:.3g}",
                 _fmt(r["floor_ratio"]), _fmt(None if r.get("numpy_share") is None else 100 * r["numpy_share"], 0, "%"),
                 _fmt(r.get("vs_torch"))]
        for p in peers:
            entry = r["peers"].get(p)
            cells.append("-" if not entry else _fmt(entry["ratio"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(checks: List[Dict[str, Any]]) -> str:
    lines = ["| target | model | backend | device | measured | met |", "|---|---|---|---|---|---|"]
    for c in checks:
        met = "n/a" if c["passed"] is None else ("yes" if c["passed"] else "**no**")
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        lines.append(f"| {c['target']} | {c['workload']} | {c['backend']} | {c['device']} | {value} | {met} |")
    return "\n".join(lines)


def markdown(info: Dict[str, Any], settings: Dict[str, Any], rows: List[Row], checks: List[Dict[str, Any]],
             peers: List[str], command: str) -> str:
    gpu = f", GPU: {info['gpu']} ({info['gpu_memory_gib']} GiB)" if "gpu" in info else ", no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    agreement = [f"- {r['workload']} / {r['method']} vs {p}: Pearson r = {e['agreement']:.4f}"
                 for r in rows if r["backend"] == "torch" for p, e in r["peers"].items() if e.get("agreement") is not None]
    return "\n".join([
        f"# Benchmark: {machine_name(info)}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores (torch uses {info['torch_threads']} threads){gpu}.",
        f"Versions: {versions}.",
        f"Command: `{command}`; {settings['mode']} mode; median of up to {settings['repeats']} timed calls after one warm-up.",
        "",
        "Ratios: `x floor` is cnnlens's time over the model's own cost for the same work (plain PyTorch, best",
        "batch size; for ONNX Runtime, which has no backward pass of its own, its forward passes alone);",
        "`torch / onnx` is the torch backend's time for the same method over the ONNX backend's (above 1: ONNX",
        "Runtime is faster); `peer / cnnlens` is the peer's time over cnnlens's (above 1: cnnlens is faster).",
        "",
        table(rows, peers),
        "",
        "## Targets",
        "",
        targets_table([c for c in checks if peers or c["value"] is not None]),  # no peer measured: no peer rows
        "",
        *(["## Do the peers compute the same maps?",
           "",
           "Mean per-image Pearson correlation between cnnlens's maps and each peer's (SmoothGrad draws different "
           "noise, so it is left out):",
           "",
           *agreement,
           ""] if agreement else []),
    ])


def write(out_dir: str, info: Dict[str, Any], settings: Dict[str, Any], rows: List[Row],
          checks: List[Dict[str, Any]], peers: List[str], command: str, suffix: str = "") -> str:
    """Write ``<machine><suffix>.md`` and ``.json`` (each atomically); return the Markdown."""
    os.makedirs(out_dir, exist_ok=True)
    name = machine_name(info) + suffix
    text = markdown(info, settings, rows, checks, peers, command)
    data = dict(machine=info, settings=settings, command=command, rows=rows, targets=checks)
    for suffix, content in ((".md", text), (".json", json.dumps(data, indent=1, default=str) + "\n")):
        path = os.path.join(out_dir, name + suffix)
        with open(path + ".tmp", "w") as f:
            f.write(content)
        os.replace(path + ".tmp", path)
    return text


def update_readme(readme: str, text: str, machine: str, section: str = "bench", script: str = "run.py") -> None:
    """Replace the ``section`` of the Markdown page ``readme`` (docs/speed.md: between its
    ``<!-- section:start/end -->`` markers) with ``text``'s tables."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    with open(readme) as f:
        content = f.read()
    if start not in content or end not in content or content.index(start) > content.index(end):
        raise SystemExit(f"{readme} has no {start} ... {end} section to update")
    body = text.split("\n", 2)[2].replace("\n## ", "\n### ")  # drop the title line; headings one level down
    block = f"{start}\n<!-- written by benchmarks/{script} --update-readme from results/{machine}.md -->\n{body.strip()}\n{end}"
    before, rest = content.split(start, 1)
    after = rest.split(end, 1)[1]
    with open(readme + ".tmp", "w") as f:
        f.write(before + block + after)
    os.replace(readme + ".tmp", readme)


def publish(name: str, text: str, data: Optional[Dict[str, Any]], section: str, script: str,
            update: bool) -> None:
    """Write ``results/<name>.md`` (and ``.json`` unless ``data`` is None), print the Markdown, and
    with ``update`` put it into the ``section`` of the documentation's speed page (docs/speed.md): the
    tail of every benchmark script."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
    os.makedirs(folder, exist_ok=True)
    files = [(".md", text)] + ([] if data is None else [(".json", json.dumps(data, indent=1, default=str) + "\n")])
    for suffix, content in files:
        with open(os.path.join(folder, name + suffix), "w") as handle:
            handle.write(content)
    print(text)
    if update:
        readme = os.path.join(os.path.dirname(os.path.dirname(folder)), "docs", "speed.md")
        update_readme(readme, text, name, section=section, script=script)
