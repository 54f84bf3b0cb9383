"""Real-ComfyUI test harness: host set-up, in-process executor, real server, workflow conversion.

Used by the tests, the demo (``.ci/demo.sh``) and ``bench/``; it imports nothing from pytest.
"""
