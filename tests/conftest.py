"""Shared test setup: the package is imported first, so every test runs offline."""

import yolo_advamd  # noqa: F401  (sets the offline environment before Ultralytics is imported)
