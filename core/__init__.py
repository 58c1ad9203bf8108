"""diskwatch.core — the shared contracts below every other layer.

Record schemas, the wire codec, settings and the Backblaze dump reader live here because
both the online path (``diskwatch.stream``) and the offline path (``diskwatch.training``)
need them, and neither may import the other or the command-line shell.
"""
