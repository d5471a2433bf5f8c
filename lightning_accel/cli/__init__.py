"""The ``lightning-accel`` command line: Hydra-composed runs of the library."""
