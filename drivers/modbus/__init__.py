"""Modbus driver: TCP, RTU on a serial port, RTU framed over TCP (pymodbus behind one module)."""
