"""Protocol drivers: bytes on the wire to values and back.

Drivers know no clock, schedule, storage or retry policy beyond one request; the
gateway core (``gateway/``) owns all of that.
"""
