"""pi-classifier: a live camera image classifier appliance for the Raspberry Pi."""

__version__ = "0.1.0"
