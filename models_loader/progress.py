"""ComfyUI's node progress bar for long work inside the pack's functions (a no-op outside ComfyUI,
e.g. in a training subprocess or a plain script). Updates are sent only when the shown percentage
changes, so a loop over hundreds of items does not flood the websocket."""


class Progress:
    def __init__(self, total: int):
        self.total = max(1, int(total))
        self.done = 0
        self._shown = -1
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(self.total)
        except Exception:  # not running inside ComfyUI
            self._bar = None

    def update(self, n: int = 1):
        self.done = min(self.total, self.done + n)
        percent = self.done * 100 // self.total
        if self._bar is not None and percent != self._shown:
            self._shown = percent
            self._bar.update_absolute(self.done, self.total)


def progress(total: int) -> Progress:
    return Progress(total)
