"""The offline path: read Backblaze dumps, build labelled sequences, train
and evaluate model bundles. Imports ``models``."""
