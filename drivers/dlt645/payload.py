"""The seam between what to read from a DL/T 645 meter and how a request travels.

The point reads (:mod:`drivers.dlt645.point_reads`), the meter clock
(:mod:`drivers.dlt645.meter_clock`) and the freeze and settlement records
(:mod:`drivers.dlt645.records`) need one operation from the driver: read one DI of one
meter and get its value bytes, follow-up frames joined. They receive it as a
:data:`ReadPayload`, so they hold no transport, lock or timing of their own; the driver
(:mod:`drivers.dlt645.driver`) owns those and calls them with the bus lock held.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from drivers.dlt645.codec import ProtocolName

ReadPayload = Callable[[str, int, ProtocolName, float, "int | None"], Awaitable[bytes]]
"""``read(address, di, protocol, timeout, expect)``: the DI's value bytes (after the echoed DI).

``address`` is normalised (12 digits); ``expect`` is the value length the reply should
have (None: unknown), which sizes the reply window. Raises what a transaction raises:
DeviceException (the meter refused), FrameError / WrongAddressError, ReadTimeout,
TransportError.
"""

RefusedBlocks = dict[str, set[int]]
"""Per meter address, the block DIs the meter refused: read point by point from then on."""
