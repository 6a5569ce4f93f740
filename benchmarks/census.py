"""The census of exported model families (issue 22): every member of ``tests/census_models.py``
exported by both torch.onnx exporters (legacy at opsets 17 and 14, dynamo at 18), with the ops on
the explained path, the ops without a backward rule, and the relative errors of cnnlens's ONNX
gradients against PyTorch autograd on the original module in float64 (input gradient, a
mid-network layer's gradient), beside PyTorch's own float32 error against the same reference. The test ``tests/backends/test_onnx_census.py`` asserts the same
rows (all of them with ``CNNLENS_CENSUS=all``).

    python benchmarks/census.py                 # prints the table (about 10 minutes on 2 CPU cores)
    python benchmarks/census.py --update-docs   # and writes it into docs/census.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
DOC = os.path.join(ROOT, "docs", "census.md")
START, END = "<!-- census:start -->", "<!-- census:end -->"


def table(rows) -> str:
    lines = ["| model | family | export | ops on the path | without a rule | layer compared | input grad. error | "
             "layer grad. error | PyTorch float32 error |", "|---|---|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        missing = "; ".join(r["missing"]) or "none"
        if "error" in r:
            lines.append(f"| {r['name']} | {r['family']} | {r['exporter']} {r['opset']} | | | export failed: "
                         f"{r['error']} | | | |")
            continue
        errors = (f"{r['input_error']:.1e} | {r['layer_error']:.1e} | {r['torch_float32_error']:.1e}"
                  if "input_error" in r else " | | ")
        lines.append(f"| {r['name']} | {r['family']} | {r['exporter']} {r['opset']} | {len(r['ops'])} | {missing} | "
                     f"`{r.get('layer', '')}` | {errors} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update-docs", action="store_true", help="write the table into docs/census.md")
    parser.add_argument("--only", nargs="+", help="these members only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from tests.census_models import CENSUS, EXPORTS, examine

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.only or list(CENSUS):
            for exporter, opset in EXPORTS:
                try:
                    row = examine(name, exporter, opset, folder)
                except Exception as error:  # noqa: BLE001 - a row says what failed
                    row = dict(name=name, family=CENSUS[name][2], exporter=exporter, opset=opset,
                               error=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:120]}")
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.update_docs:
        page = open(DOC, encoding="utf-8").read()
        before, rest = page.split(START, 1)
        after = rest.split(END, 1)[1]
        with open(DOC, "w", encoding="utf-8") as handle:
            handle.write(f"{before}{START}\n<!-- written by benchmarks/census.py --update-docs -->\n{text}\n{END}{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
