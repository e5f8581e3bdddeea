"""Delivery of committed messages from the local store to MQTT and InfluxDB.

::

    store (SQLite outbox, per-sink cursor)
        │  pending(sink, page, after)   in seq order, a page at a time
        ▼
    SinkRunner (delivery.py)           one per sink: window, contiguous ack, reconnect, metrics
        │  send(row) / delivered(seqs) · rejected(seqs) · broken(SinkError)
        ▼
    MqttSink (mqtt.py)  · InfluxSink (influx.py)      the only modules that import paho /
                                                       influxdb_client; errors → SinkError

The runtime builds the runners with :func:`gateway.sinks.delivery.build_sinks` and starts and
stops them; health and ``/metrics`` read :meth:`SinkRunner.state` and
:meth:`SinkRunner.prometheus_lines`.
"""
