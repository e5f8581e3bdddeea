"""DL/T 645-2007 (and -1997 read) driver: our own codec, serial and TCP transports."""
