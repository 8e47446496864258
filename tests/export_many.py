"""Export many builders in ONE process (TensorFlow's import costs seconds per process).

``python tests/export_many.py OUT FILE.py NAME...`` runs the export stage for each
``FILE.py:NAME`` into ``OUT/NAME/export``; a failure is written to ``OUT/NAME/export_error.txt``
and the others go on. Exit status 0 when all exported.
"""

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this checkout's pipeline

from pipeline.stages import export  # noqa: E402
from pipeline.core.config import load_settings  # noqa: E402
from pipeline.core.spec import resolve  # noqa: E402


def main(out: str, file: str, names: list[str]) -> int:
    failed = 0
    settings = load_settings()
    for name in names:
        try:
            export.run(resolve(f"{file}:{name}"), settings, Path(out))
        except Exception:  # noqa: BLE001 - recorded per model, the test reports it
            failed += 1
            d = Path(out) / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "export_error.txt").write_text(traceback.format_exc())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
