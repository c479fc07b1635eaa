"""The rooms and their imports (docs/architecture.md): engines, cache and safety know nothing of
the job service; the service knows nothing of the web; the web and the io worker never load torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# room → the rooms of ours it must not import
FORBIDDEN = {
    "workers": {"tasks", "web", "stack", "client"},
    "cache": {"tasks", "web", "stack", "client", "workers"},
    "safety": {"tasks", "web", "stack", "client", "workers", "cache"},
    "tasks": {"web", "stack", "client"},
    "web": {"stack", "client"},
    "client": {"tasks", "web", "workers", "cache", "safety", "stack"},
}


def imported_roots(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every import in a file, lazy ones inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_imports_run_one_way(room):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {package}"
             for path in sorted((ROOT / room).rglob("*.py"))
             for line, package in sorted(imported_roots(path)) if package in FORBIDDEN[room]]
    assert not wrong, "imports against the rooms' direction (docs/architecture.md):\n" + "\n".join(wrong)


def test_the_walker_sees_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from tasks.jobs import Job\n    import web.api\n")
    assert {package for _, package in imported_roots(source)} == {"os", "tasks", "web"}


HEAVY = ("torch", "diffusers", "transformers")


@pytest.mark.parametrize("code", [
    "import web; web.create_app()",  # every gunicorn worker
    "import tasks.celery_app, tasks.lifecycle, tasks.webhooks.tasks, tasks.celery_app as c; "
    "[__import__(m) for m in c.modules_for(['io']) + [c.INPUT_MODULES]]",  # what an io worker imports
    "import tasks.reaper, tasks.services; tasks.services.get_services()",  # the reaper, `pixelmill keys`
    "import stack.cli, stack.supervisor, client.submit",  # the command and the HTTP client
])
def test_no_torch_outside_the_engines(code):
    probe = f"import sys; {code}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{code!r} loaded {out.stdout.strip()}"


def test_a_stage_worker_does_load_the_stages():
    from tasks.celery_app import IO_MODULES, STAGE_MODULES, modules_for

    assert modules_for(["io"]) == list(IO_MODULES)
    assert STAGE_MODULES in modules_for(["cpu"]) and STAGE_MODULES in modules_for(["gpu", "io"])
    assert STAGE_MODULES in modules_for(None)  # no -Q: Celery's default queue (cpu)
