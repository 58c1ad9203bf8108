"""A rich progress display for Keras fits (and plain lines off a terminal)."""

from __future__ import annotations

from typing import Any

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgress(keras.callbacks.Callback):
    """One bar per fit: epochs, the current loss and validation metrics."""

    def __init__(self, title: str, epochs: int, console: Console | None = None) -> None:
        super().__init__()
        self.title = title
        self.epochs = epochs
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self.console.is_terminal:
            self.console.print(f"{self.title}: training up to {self.epochs} epochs")
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.title, total=self.epochs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in (logs or {}).items() if isinstance(v, int | float))
        if self._progress is None:
            self.console.print(f"{self.title} epoch {epoch + 1}/{self.epochs}: {shown}")
            return
        self._progress.update(self._task, completed=epoch + 1, description=f"{self.title} [{shown}]")

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
