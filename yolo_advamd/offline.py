"""Offline guard: Ultralytics and its friends make no network attempt once `yolo_advamd` is imported.

Environment variables are set before Ultralytics is imported (its `ONLINE` check runs at import), and a font that ships
with matplotlib is placed where Ultralytics' `check_font` looks, so plots never download Arial.ttf. The user's global
Ultralytics settings file is not touched.
"""

import os
import shutil
import sys
from pathlib import Path

OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",  # Ultralytics: no DNS check at import, no PyPI update check, no analytics, no hub
    "YOLO_AUTOINSTALL": "False",  # Ultralytics: check_requirements never pip-installs
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations: no PyPI version check at import
}


def set_offline_env():
    """Set the environment variables that keep Ultralytics, albumentations and friends offline."""
    os.environ.update(OFFLINE_ENV)
    for name, module in list(sys.modules.items()):  # Ultralytics imported before us: its ONLINE flag is stale
        if name.startswith("ultralytics") and getattr(module, "ONLINE", None) is True:
            module.ONLINE = False


def place_font():
    """Copy matplotlib's DejaVuSans where Ultralytics' `check_font` looks for Arial fonts, if none is there yet.

    Returns:
        (Path): The Ultralytics user config directory holding the fonts.
    """
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = USER_CONFIG_DIR / name
        if not target.exists():
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)  # atomic: a concurrent process never sees half a font
    return USER_CONFIG_DIR
