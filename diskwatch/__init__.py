"""diskwatch — streaming failure prediction for hard drives from SMART telemetry.

One import namespace over the repository's layers (each a top-level folder):

- ``diskwatch.core``     (``core/``)     record schemas, wire codec, settings, dump reader;
- ``diskwatch.models``   (``models/``)   features, architectures, bundle format, inference;
- ``diskwatch.stream``   (``stream/``)   the online path (Kafka worker, Redis windows);
- ``diskwatch.training`` (``training/``) the offline path (training, thresholds, reports);
- the shell (``diskwatch.cli``, ``.demo``, ``.replay``, ``.alerts``, ``.smoke``) on top.

Lower layers never import higher ones; nothing imports the shell. This module itself
holds only the version, so importing any layer does not drag the shell in.
"""

__version__ = "0.1.0"
