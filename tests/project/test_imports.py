"""`import cnnlens` works without torch, and the core imports nothing but NumPy."""

import ast
import pathlib
import subprocess
import sys

import cnnlens

ROOT = pathlib.Path(cnnlens.__file__).parent
ALLOWED_CORE = {"numpy", "__future__"} | set(sys.stdlib_module_names)


def test_core_imports_only_numpy_and_the_standard_library():
    for path in (ROOT / "core").rglob("*.py"):
        depth = len(path.relative_to(ROOT / "core").parts)  # 1 for core/x.py, 2 for core/methods/x.py
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: must stay inside core
                    assert node.level <= depth, f"{path.name} imports outside core: {ast.unparse(node)}"
                    continue
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in ALLOWED_CORE, f"{path.name} imports {name}"


def test_import_without_torch_in_a_subprocess():
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'onnxruntime', 'onnx'): sys.modules[name] = None\n"
        "import numpy as np, cnnlens\n"
        "from cnnlens.core import methods, resize, scaling, occlusion, noise, cam, targets\n"
        "x = np.ones((1, 1, 2, 2), np.float32)\n"
        "assert resize.resize_bilinear(x, (4, 4)).shape == (1, 1, 4, 4)\n"
        "try:\n"
        "    cnnlens.explain(object(), x, 'saliency')\n"
        "except cnnlens.ModelError as e:\n"
        "    print('ok', e)\n"
        "assert not any(m.startswith('torch') and sys.modules[m] is not None for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_import_cnnlens_does_not_import_torch():
    code = "import sys, cnnlens; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert result.stdout.strip() == "False", result.stderr
