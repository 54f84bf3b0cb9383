"""Helpers shared by the web/ browser tests."""
PACK = "comfyui_face_personalization"


def pack_errors(console):
    """Console errors and page errors that name one of the pack's scripts (or its routes)."""
    return [m for m in console if m[0] in ("error", "pageerror") and (PACK in m[1] or "/fp/training" in m[1])]


def open_training_tab(page):
    """Open the Training sidebar tab (the frontend's own tab button) and wait for the panel."""
    page.locator(".face-personalization-training-tab-button").first.click()
    page.wait_for_selector(".fp-train-panel", timeout=30_000)
    return page.locator(".fp-train-panel")
