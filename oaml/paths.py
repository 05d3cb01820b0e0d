"""Where the Hydra configs live: ``conf/`` at the repository root, beside the package.

Entry points pass this absolute path to ``hydra.main``: a path relative to the module works for
``python -m oaml.train`` but not for the ``oaml-train`` console script, where Hydra resolves it as a Python
package (``conf``) instead of a folder.
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
