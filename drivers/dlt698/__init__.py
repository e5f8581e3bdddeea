"""DL/T 698.45 (object-oriented data exchange) driver: our own pure codec, catalogue and a
meter-side responder for the simulator. See ``README.md`` for what a real meter must confirm.
"""
