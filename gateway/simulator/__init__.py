"""Simulated meters for every bus of a configuration: ``amr-gateway simulate`` and the demo.

:mod:`gateway.simulator.fleet` reads a configuration and asks each protocol's package for
its simulator (``drivers/<protocol>/simulator.py``); the load and fault model every
simulator shares lives in :mod:`drivers.simulation`.
"""
