"""amr-gateway: a meter-data gateway for power utilities.

Polls Modbus and DL/T 645 meters, keeps every reading in a durable local store first,
delivers it to MQTT and InfluxDB, takes staged settlement readings and serves interval
data to billing over HTTP.
"""

__version__ = "0.1.0"
