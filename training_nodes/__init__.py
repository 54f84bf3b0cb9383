"""Background training on the ComfyUI side: the job engine (:mod:`.jobs`), its HTTP routes
(:mod:`.routes`) and the training nodes (:mod:`.nodes`). Training itself runs in a worker process
(``train.py`` -> ``models_loader.training.run``), never in the server."""
_routes_registered = False


def register_routes():
    """Add the /fp/training routes to the running PromptServer once (no server: nothing to do)."""
    global _routes_registered
    if _routes_registered:
        return
    try:
        from server import PromptServer
    except Exception:
        return
    if getattr(PromptServer, "instance", None) is None:
        return
    from . import routes
    from .jobs import JobManager

    routes.register(PromptServer.instance.routes, JobManager.get)
    _routes_registered = True
