"""diskwatch: the application shell (CLI, settings, record schemas).

The work happens in three sibling packages: ``stream`` (online path),
``training`` (offline path) and ``models`` (shared by both).
"""

__version__ = "0.1.0"
