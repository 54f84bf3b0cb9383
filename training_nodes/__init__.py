"""Background training jobs (later stage): job engine, submit/status/cancel/load nodes and
server routes. Kept as its own package so the prompt-time nodes never import training code."""
