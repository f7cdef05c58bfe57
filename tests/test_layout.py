"""The package's layout: what a run imports, and what it does not."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_imports_no_test_tooling():
    """mfsi.testing (random-weight models, the character tokenizer's builder, chat-template
    fixtures) serves tests and experiments: the entry point, the loop and the report never
    import it, so it is free to change with the tests."""
    code = (
        "import sys, run, mfsi.loop, mfsi.report, mfsi.audit\n"
        "print(sorted(m for m in sys.modules if m.startswith('mfsi.testing')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_loop_imports_no_generation_backend_module():
    """The loop reaches generation through mfsi.generation's own names only: which backend
    runs is the package's business (each answers its start-up checks through Backend)."""
    tree = ast.parse((ROOT / "mfsi" / "loop.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert "mfsi.generation" in imported
    assert not [m for m in imported if m.startswith("mfsi.generation.")]
