"""Fetch the Compose Specification's JSON schema into .cache/compose-spec.json.

The schema is not ours, so the project does not ship it: tests/unit/test_deploy.py validates
docker-compose.yml against it, and this script (run by `make test`) fetches it from PyPI. The
`check-jsonschema` wheel vendors the upstream compose-spec schema (refreshed with each of its
releases, with the schema's sha256 beside it); we take only that JSON file out of the wheel,
check its sha256 and install nothing.

    python scripts/fetch_compose_schema.py [--force] [--dest .cache/compose-spec.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".cache" / "compose-spec.json"
# The newest release on PyPI when this was written (its vendored schema: compose-spec, Oct 2026).
# Raise it to pick up a newer schema.
PACKAGE = "check-jsonschema==0.39.0"
MEMBER = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
SHA_MEMBER = "check_jsonschema/builtin_schemas/vendor/sha256/compose-spec.sha256"


def fetch(dest: Path = DEST, *, force: bool = False) -> Path:
    """Download the wheel (no dependencies, nothing installed) and extract the schema."""
    if dest.exists() and not force:
        return dest
    with tempfile.TemporaryDirectory(prefix="compose-spec-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
             "--dest", tmp, PACKAGE],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            schema = zf.read(MEMBER)
            expected = zf.read(SHA_MEMBER).decode().strip()
    actual = hashlib.sha256(schema).hexdigest()
    if actual != expected:
        raise SystemExit(f"compose-spec.json from {wheel.name}: sha256 {actual} != {expected}")
    json.loads(schema)  # a JSON document, or fail here rather than in a test
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dest = dest.with_suffix(".tmp")
    tmp_dest.write_bytes(schema)
    tmp_dest.replace(dest)  # atomic: a concurrent reader sees the old file or the whole new one
    dest.with_name(dest.name + ".source").write_text(f"{PACKAGE} {MEMBER} sha256={actual}\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEST)
    parser.add_argument("--force", action="store_true", help="fetch again even if the file exists")
    args = parser.parse_args(argv)
    path = fetch(args.dest, force=args.force)
    print(f"compose-spec schema: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
